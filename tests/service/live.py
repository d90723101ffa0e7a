"""A real uvicorn server on a free loopback port, in a thread (for streaming and WebSockets), and
the module-scoped `live` app that the tests through real protocol clients (tritonclient,
openai) share: import `clock` and `live` into a test module to use them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import uvicorn
from fastapi import FastAPI

from service.app import create_app
from service.engine.registry import Registry
from service.settings import Settings
from tests.conftest import FIXTURE_MODELS, LONG
from tests.service.conftest import FakeClock

TTL = 60.0  # the session TTL of `live`: a test advances `clock` past it


@contextmanager
def serve_in_thread(app: FastAPI) -> Iterator[str]:
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_config=None,
        access_log=False,
        lifespan="on",
        ws="websockets-sansio",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@dataclass(frozen=True)
class LiveServer:
    app: FastAPI  # for a look at the server's state
    url: str  # host:port


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    """Per module, not per test (as in conftest): `live` outlives a test and keeps this clock."""
    return FakeClock()


@pytest.fixture(scope="module")
def live(registry: Registry, clock: FakeClock) -> Iterator[LiveServer]:
    settings = Settings(
        models_dir=FIXTURE_MODELS,
        max_wait_ms=1.0,
        log_json=False,
        session_ttl_s=TTL,
        max_tokens_limit=LONG,
    )
    app = create_app(settings, registry=registry, clock=clock, configure_logs=False)
    with serve_in_thread(app) as url:
        yield LiveServer(app, url)
