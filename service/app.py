"""`create_app(settings)`: a whole server in one process, the engine beside the API (`--workers 0`,
and the tests). The API reaches it in process, or over the wire `--workers N` uses when
`RNNSERVE_ENGINE_TRANSPORT` says so (one process that exercises the whole process boundary: the
tests run every suite that way too)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.api.app import api_app
from service.engine.registry import Registry
from service.engine.startup import running_engine
from service.metrics import Metrics
from service.protocol.client import EngineClient
from service.sessions import Clock, SessionStore
from service.settings import Settings
from service.transport.loopback import wire_loopback


def create_app(
    settings: Settings | None = None,
    *,
    store: SessionStore | None = None,
    registry: Registry | None = None,
    clock: Clock = time.time,
    configure_logs: bool = True,
    direct_routes: bool = True,
) -> FastAPI:
    """The app with its engine. `store`, `registry` and `clock` are injectable (tests); else
    built from settings. `app.state.local` is the engine's in-process client (tests and
    diagnostics reach the engine through it)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def local_engine(app: FastAPI, m: Metrics) -> AsyncIterator[EngineClient]:
        async with running_engine(settings, m, registry=registry, store=store, clock=clock) as c:
            app.state.local = c
            if settings.engine_transport == "inprocess":
                yield c
                return
            async with wire_loopback(c, settings) as remote:
                yield remote

    return api_app(
        settings, local_engine, configure_logs=configure_logs, direct_routes=direct_routes
    )
