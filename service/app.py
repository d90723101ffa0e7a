"""`create_app(settings)`: the FastAPI application factory and its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.api import health, metrics, models, playground, sessions, ws
from service.api.deps import Services
from service.api.direct import DirectRoutes
from service.api.docs import install as install_docs
from service.api.errors import install_error_handlers
from service.api.openai.router import compat_router as openai_compat_router
from service.api.openai.router import router as openai_router
from service.api.openapi import install as install_openapi
from service.api.v2.router import router as v2_router
from service.engine.client import InProcessClient
from service.engine.engine import Engine
from service.engine.registry import Registry, load_registry
from service.engine.remote import RemoteClient
from service.engine.scheduler import SchedulerConfig
from service.engine.session_ops import SessionService
from service.engine.sessions import Clock, MemoryStore, SessionStore
from service.engine.stream_slots import StreamSlots
from service.heap import freeze_startup_heap
from service.keys import Keys, on_signal, reload_on_sighup
from service.logging import configure_logging, get_logger
from service.metrics import Metrics
from service.middleware.auth import AuthMiddleware
from service.middleware.limits import GuardMiddleware
from service.middleware.observe import ObserveMiddleware
from service.processes import ENGINE_GONE_SIGNAL
from service.settings import Settings

log = get_logger("app")


def build_store(settings: Settings, metrics: Metrics, clock: Clock) -> SessionStore:
    if settings.store == "redis":
        from service.engine.sessions.redis_store import RedisStore

        return RedisStore(
            settings.redis_url,
            settings.max_sessions,
            evict=settings.session_evict,
            expired_memory_s=settings.expired_memory_s,
            clock=clock,
            on_change=metrics.live_sessions.set,
            on_evict=lambda why: metrics.session_evictions.labels(why).inc(),
            max_per_owner=settings.max_sessions_per_key,
            socket_timeout_s=settings.redis_timeout_s,
        )
    return MemoryStore(
        settings.max_sessions,
        evict=settings.session_evict,
        expired_memory_s=settings.expired_memory_s,
        clock=clock,
        on_change=metrics.live_sessions.set,
        on_evict=lambda why: metrics.session_evictions.labels(why).inc(),
        max_per_owner=settings.max_sessions_per_key,
    )


def create_app(
    settings: Settings | None = None,
    *,
    store: SessionStore | None = None,
    registry: Registry | None = None,
    clock: Clock = time.time,
    configure_logs: bool = True,
    engine_address: str | None = None,
    direct_routes: bool = True,
) -> FastAPI:
    """The app. `store`, `registry` and `clock` are injectable (tests); else built from settings.
    With `engine_address` it is an API worker of the engine process listening there (no models,
    no sessions of its own). `direct_routes=False` leaves every request to FastAPI's router (the
    tests compare the two)."""
    settings = settings or Settings()
    if configure_logs:
        configure_logging(settings.log_level, settings.log_json)
    keys = Keys.from_settings(settings)  # a broken keys file is fatal here, never on reload

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        m = Metrics()
        if engine_address is not None:  # an API worker: the engine runs in its own process
            remote = RemoteClient(engine_address, settings.stream_buffer_bytes)
            await remote.connect()
            app.state.services = Services(settings, remote, m)
            freeze_startup_heap()
            try:
                # SIGUSR1: the supervisor says the engine process died; every engine call of
                # this worker then fails at once with 503 (`RemoteClient.engine_gone`)
                with reload_on_sighup(keys), on_signal(ENGINE_GONE_SIGNAL, remote.engine_gone):
                    yield
            finally:
                await remote.close()
            return
        async with running_engine(settings, m, registry=registry, store=store, clock=clock) as c:
            app.state.local = c  # the engine in this process (tests and diagnostics reach it)
            if settings.engine_transport == "inprocess":
                app.state.services = Services(settings, c, m)
                freeze_startup_heap()
                with reload_on_sighup(keys):
                    yield
                return
            # the same engine, reached over the wire that `--workers` uses: one process that
            # exercises the whole process boundary (the tests run every suite this way too)
            async with wire_loopback(c, settings) as remote:
                app.state.services = Services(settings, remote, m)
                with reload_on_sighup(keys):
                    yield

    app = FastAPI(
        title="rnnserve",
        summary="Stateful LSTM/GRU serving: predictions, streaming generation, sessions.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # served by service/api/docs.py, with its assets (no CDN)
        redoc_url=None,
    )
    install_error_handlers(app)
    install_docs(app)
    for r in (health.router, metrics.router, models.router, sessions.router, ws.router):
        app.include_router(r)
    app.include_router(v2_router)
    app.include_router(openai_router)
    app.include_router(openai_compat_router)
    app.include_router(playground.router)
    # outermost last: observe -> auth (sets the owner) -> limits (body, timeouts, streams per
    # key) -> the direct dispatch of the hot routes (direct.py), then FastAPI's router
    if direct_routes:
        app.add_middleware(DirectRoutes, routes=[*sessions.router.routes, *models.router.routes])
    app.add_middleware(GuardMiddleware, settings=settings)
    app.add_middleware(AuthMiddleware, keys=keys, settings=settings)
    app.add_middleware(ObserveMiddleware)
    install_openapi(app, settings, auth=keys.enabled)
    return app


@asynccontextmanager
async def wire_loopback(local: InProcessClient, settings: Settings) -> AsyncIterator[RemoteClient]:
    """An `EngineHost` for `local` on a private IPC socket, and a `RemoteClient` to it."""
    from service.engine.host import EngineHost

    with tempfile.TemporaryDirectory(prefix="rnnserve-wire-") as d:
        address = f"ipc://{d}/engine.sock"
        host = EngineHost(local, address)
        serving = asyncio.create_task(host.serve())
        remote = RemoteClient(address, settings.stream_buffer_bytes)
        try:
            await remote.connect()
            yield remote
        finally:
            await remote.close()
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
            await host.close()


@contextlib.asynccontextmanager
async def running_engine(
    settings: Settings,
    m: Metrics,
    *,
    registry: Registry | None = None,
    store: SessionStore | None = None,
    clock: Clock = time.time,
) -> AsyncIterator[InProcessClient]:
    """Models loaded, schedulers running, the session store open and swept: the engine, ready
    to serve through the client it yields (in the API's process, or in the engine process)."""
    reg = registry or load_registry(
        settings.models_dir, settings.providers, settings.intra_op_threads, settings.variant
    )
    for model in reg.models.values():
        man = model.manifest
        m.model_info.labels(
            man.name,
            man.version,
            man.task,
            man.cell,
            model.sha256,
            model.runner.provider,
            model.variant or "fp32",
        ).set(1)
    m.model_load_failures.set(len(reg.failed))
    config = SchedulerConfig(
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        max_queue=settings.max_queue,
        max_streams=settings.max_streams,
        max_batch_tokens=settings.max_batch_tokens,
        prefill_chunk_tokens=settings.prefill_chunk_tokens,
        prefill_pass_ms=settings.prefill_pass_ms,
        max_request_tokens=settings.max_request_tokens,
        stall_timeout_s=settings.stall_timeout_s,
        stream_buffer_bytes=settings.stream_buffer_bytes,
    )
    engine = Engine(reg, config, m)
    engine.start()
    st = store or build_store(settings, m, clock)
    svc = SessionService(
        engine,
        st,
        default_ttl_s=settings.session_ttl_s,
        max_ttl_s=settings.max_session_ttl_s,
        idempotency_ttl_s=settings.idempotency_ttl_s,
        clock=clock,
    )
    sweeper = asyncio.create_task(_sweep(st))
    log.info("serving", extra={"models": sorted(reg.models), "failed": len(reg.failed)})
    try:
        slots = StreamSlots(settings.max_open_streams, settings.max_streams_per_key)
        yield InProcessClient(engine, svc, st, slots)
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await engine.close(settings.shutdown_timeout_s)
        await st.close()
        log.info("stopped")


async def _sweep(store: SessionStore, every_s: float = 30.0) -> None:
    while True:
        await asyncio.sleep(every_s)
        try:
            await store.sweep()
        except Exception:
            log.exception("session sweep failed")
