"""`serve(settings)`: the server the CLI starts: one process (`workers` 0: the engine and the API
in this process), or the supervisor with an engine process and `workers` API processes."""

from __future__ import annotations

import os

# numpy's BLAS stays single-threaded in the server (set before numpy is first imported; an
# operator's own setting wins). Its only BLAS work is the tiny per-step sampling product, and a
# threaded OpenBLAS wakes a pool that fights onnxruntime and the event loop for the cores
# (measured on 2 cores with one busy: 20 us vs 74-114 us for the 256 x 65 prefix-sum product).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from service import tracing
from service.api.http_server import run_app
from service.app import create_app
from service.settings import Settings


def serve(settings: Settings | None = None) -> None:
    """One process (`workers` 0), or an engine process and `workers` API processes."""
    settings = settings or Settings()
    if settings.workers > 0:
        from service.supervisor.supervisor import serve_workers

        serve_workers(settings)
        return
    tracing.configure("server")  # (on only when the OTEL_* environment says so)
    try:
        run_app(create_app(settings), settings)
    finally:
        tracing.shutdown()
