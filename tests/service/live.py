"""The module-scoped `live` server (`tests/servers.py` `serve_in_thread`) that the tests through
real protocol clients (tritonclient, openai) share: import `clock` and `live` into a test module
to use them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi import FastAPI

from service.app import create_app
from service.engine.registry import Registry
from service.settings import Settings
from tests.conftest import FIXTURE_MODELS, LONG
from tests.servers import serve_in_thread
from tests.service.conftest import FakeClock

TTL = 60.0  # the session TTL of `live`: a test advances `clock` past it


@dataclass(frozen=True)
class LiveServer:
    app: FastAPI  # for a look at the server's state
    url: str  # host:port

    @property
    def grpc(self) -> str:
        """host:port of its gRPC endpoint."""
        return f"127.0.0.1:{self.app.state.grpc_port}"


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
        grpc_port=0,
    )
    app = create_app(settings, registry=registry, clock=clock, configure_logs=False)
    with serve_in_thread(app) as url:
        yield LiveServer(app, url)
