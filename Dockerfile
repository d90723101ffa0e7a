# syntax=docker/dockerfile:1
# rnnserve serving image (CPU): onnxruntime + FastAPI, never torch.
#
#   docker build -t rnnserve .
#   docker run --rm -p 127.0.0.1:8000:8000 rnnserve
#
# Build arguments
#   BASE_IMAGE  any Debian-like image with python3 (>= 3.11) and the venv module. Builder and runtime
#               stages use the same one, so the copied virtualenv points at the same interpreter.
# Build secret (optional)
#   build_ca    an extra PEM CA bundle trusted by pip during the build only (TLS-intercepting
#               corporate proxies): `--secret id=build_ca,src=corp-ca.pem`. It is mounted into one
#               RUN step and never written to a layer.
# See docs/deploy.md for podman (no Docker engine) and the GPU variant (deploy/Dockerfile.gpu).

ARG BASE_IMAGE=python:3.11-slim

# --------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Only what the distribution needs: metadata first, then the packages (tests, bench, training data,
# git history and local venvs are excluded by .dockerignore).
# README.md* so the build works whether or not the readme exists yet.
COPY pyproject.toml README.md* ./
COPY rnnserve/ rnnserve/
COPY service/ service/
COPY training/ training/

# The serving extra only. If a build CA secret is given, pip trusts it in addition to the system
# bundle, for this step only.
# Versions come from the ranges in pyproject.toml (the project has no lock file yet).
# hadolint ignore=DL3013
RUN --mount=type=secret,id=build_ca,required=false \
    set -eu; \
    if [ -s /run/secrets/build_ca ]; then \
      cat /etc/ssl/certs/ca-certificates.crt /run/secrets/build_ca > /tmp/build-ca.pem; \
      export PIP_CERT=/tmp/build-ca.pem; \
    fi; \
    pip install --no-cache-dir --upgrade "pip>=24"; \
    pip install --no-cache-dir ".[serve]"; \
    rm -f /tmp/build-ca.pem

# What the server never imports goes before it is compiled (26 MB): onnxruntime's offline tools
# (model optimisers, quantizer, converters) and the test suites wheels ship (numpy's, 17 MB).
# The import of service.app below fails the build if anything it needs went with them.
RUN ort=$(echo /opt/venv/lib/python3*/site-packages/onnxruntime) \
    && rm -rf "$ort/transformers" "$ort/quantization" "$ort/tools" \
    && find /opt/venv/lib -path '*/site-packages/*/*' -type d -name tests -prune -exec rm -rf {} +
# The image must never carry torch (DESIGN §1): fail the build if any dependency pulled it in;
# nor serve Redis sessions with redis-py's pure-Python reply parser (hiredis, pyproject.toml).
RUN python3 -c "import importlib.util as u, sys; sys.exit('torch found in the serving image' if u.find_spec('torch') else 0)" \
    && python3 -c "import service.app, onnxruntime, fastapi, redis.utils; print('onnxruntime', onnxruntime.__version__)" \
    && python3 -c "import redis.utils, sys; sys.exit(0 if redis.utils.HIREDIS_AVAILABLE else 'redis-py without hiredis')" \
    && python3 -m compileall -q /opt/venv/lib
# pip and setuptools are build tools: the runtime venv does not need them.
RUN pip uninstall -y -q pip setuptools

# --------------------------------------------------------------------------------------------------
# The shipped models (models/ in the build context), or an empty folder when there are none yet.
FROM ${BASE_IMAGE} AS models
COPY . /ctx/
RUN mkdir -p /ctx/models

# --------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime

LABEL org.opencontainers.image.title="rnnserve" \
      org.opencontainers.image.description="Stateful LSTM/GRU serving over onnxruntime (CPU)" \
      org.opencontainers.image.licenses="MIT"

# A fixed numeric uid/gid so Kubernetes `runAsNonRoot` can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 rnnserve \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin rnnserve

COPY --from=builder /opt/venv /opt/venv
# The shipped models, baked in; mount a folder over /app/models (or set RNNSERVE_MODELS_DIR) to
# serve others.
COPY --from=models --chown=root:root /ctx/models/ /app/models/

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RNNSERVE_MODELS_DIR=/app/models \
    RNNSERVE_HOST=0.0.0.0 \
    RNNSERVE_PORT=8000

WORKDIR /app
USER 10001:10001
# 8001: gRPC, when RNNSERVE_GRPC_PORT=8001 turns it on
EXPOSE 8000 8001

# No curl in slim images: the interpreter we already ship does the probe.
HEALTHCHECK --interval=15s --timeout=4s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RNNSERVE_PORT', '8000'), timeout=3)"]

# Exec form: the server is PID 1 and receives SIGTERM itself (graceful drain, then exit).
STOPSIGNAL SIGTERM
ENTRYPOINT ["rnnserve", "serve", "--host", "0.0.0.0"]
