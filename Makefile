# One entry point for newcomers and CI. `make serve` and `make test` each set up what they need.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: serve test setup-serve setup-dev system-deps lint typecheck pytest reproduce fixtures clean

# Set-up prints one line per step and pip's errors only: -qq, because from pip 25 on -q still
# relays every build-backend notice (setuptools' editable-install banner, once per build step).
PIP := $(BIN)/pip install -qq

$(BIN)/python:
	@echo "make: creating $(VENV)"
	@$(PY) -m venv $(VENV)
	@$(PIP) --upgrade pip

# Serving needs no torch: onnxruntime, FastAPI and friends only.
$(VENV)/.serve: pyproject.toml | $(BIN)/python
	@echo "make: installing the serving extra into $(VENV) (again only when pyproject.toml changes)"
	@$(PIP) -e '.[serve]'
	@touch $@

# Everything: training (CPU torch wheel), serving, tests and linters.
$(VENV)/.dev: pyproject.toml | $(BIN)/python
	@echo "make: installing torch, training, serving and test tools into $(VENV)"
	@$(PIP) '$(TORCH)'
	@$(PIP) -e '.[serve,train,dev]'
	@touch $@ $(VENV)/.serve

setup-serve: $(VENV)/.serve
setup-dev: $(VENV)/.dev

## Start the service on the shipped models in models/ (http://127.0.0.1:8000).
serve: setup-serve
	$(BIN)/rnnserve serve

# redis-server, nginx, chromium, wrk and podman for the tests that drive them (root installs them;
# no service is started or stopped)
system-deps:
	@bash scripts/system-deps.sh

lint: setup-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Then every HTTP suite again with the API reaching the engine over the wire that `--workers`
# uses (RNNSERVE_ENGINE_TRANSPORT=zmq): the process boundary under the whole suite (the session
# layer's own tests, stores included, reach no engine, the supervisor's always run `--workers N`
# over that wire, and the contract's and protocol's reach no server: they run once). Last, the
# suites that start a real `rnnserve` process run once more against `--workers 2` (a supervisor,
# an engine process and two API workers; their RSS and sockets are summed over the tree).
REAL_SERVER_SUITES = tests/docs tests/service/test_server.py tests/service/api/test_http_server.py \
	tests/service/client/test_examples.py tests/hardening/test_stream_bounds.py \
	tests/hardening/test_hostile_bodies.py tests/hardening/test_heavy_requests.py \
	tests/hardening/test_hostile_replays.py
pytest: setup-dev
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)
	RNNSERVE_ENGINE_TRANSPORT=zmq $(BIN)/python -m pytest -q tests/service tests/hardening tests/docs tests/e2e \
		--ignore=tests/service/sessions --ignore=tests/service/supervisor \
		--ignore=tests/service/contract --ignore=tests/service/protocol
	RNNSERVE_WORKERS=2 $(BIN)/python -m pytest -q $(REAL_SERVER_SUITES)

## Set up everything and run the whole test suite (what CI runs).
test: system-deps setup-dev lint pytest

## Retrain and re-export every shipped model from the committed configs (hours on CPU).
reproduce: setup-dev
	$(BIN)/rnnserve reproduce

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
