"""An API worker process (`rnnserve-worker`): uvicorn and the FastAPI app on the supervisor's
listening socket; HTTP, validation, tokenization and JSON / SSE / WebSocket framing. It holds no
model and no session state: it reaches the engine process through a `RemoteClient`."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from service import tracing
from service.api.app import api_app
from service.api.http_server import run_app
from service.metrics import Metrics
from service.settings import Settings
from service.signals import on_signal
from service.supervisor.control import ENGINE_GONE_SIGNAL, name_process
from service.transport.remote import RemoteClient


def worker_main(settings: dict[str, Any], sock: socket.socket, address: str) -> None:
    """Target of an API worker: the app on the shared socket, the engine at `address`."""
    name_process("rnnserve-worker")
    s = Settings(**settings)
    tracing.configure("worker")  # (on only when the OTEL_* environment says so)
    try:
        run_app(api_app(s, remote_engine(s, address)), s, sockets=[sock])
    finally:
        tracing.shutdown()  # its last spans exported (a child process runs no atexit)


def remote_engine(settings: Settings, address: str) -> Any:
    """The engine of an API worker: the engine process at `address`."""

    @asynccontextmanager
    async def connected(_app: FastAPI, _m: Metrics) -> AsyncIterator[RemoteClient]:
        remote = RemoteClient(address, settings.stream_buffer_bytes)
        await remote.connect()
        try:
            # SIGUSR1: the supervisor says the engine process died; every engine call of this
            # worker then fails at once with 503 (`RemoteClient.engine_gone`)
            with on_signal(ENGINE_GONE_SIGNAL, remote.engine_gone):
                yield remote
        finally:
            await remote.close()

    return connected
