# One entry point for newcomers and CI. `make serve` and `make test` each set up what they need.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: serve test setup-serve setup-dev system-deps lint typecheck pytest reproduce fixtures clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Serving needs no torch: onnxruntime, FastAPI and friends only.
$(VENV)/.serve: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[serve]'
	touch $@

# Everything: training (CPU torch wheel), serving, tests and linters.
$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q '$(TORCH)'
	$(BIN)/pip install -q -e '.[serve,train,dev]'
	touch $@ $(VENV)/.serve

setup-serve: $(VENV)/.serve
setup-dev: $(VENV)/.dev

## Start the service on the shipped models in models/ (http://127.0.0.1:8000).
serve: setup-serve
	$(BIN)/rnnserve serve

system-deps:
	bash scripts/system-deps.sh

lint: setup-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

pytest: setup-dev
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

## Set up everything and run the whole test suite (what CI runs).
test: system-deps setup-dev lint pytest

## Retrain and re-export every shipped model from the committed configs (hours on CPU).
reproduce: setup-dev
	$(BIN)/rnnserve reproduce

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
