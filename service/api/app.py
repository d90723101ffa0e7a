"""`api_app(settings, engine)`: the API's FastAPI application, for whichever engine it is given:
the engine process over the wire (an API worker, `supervisor/worker_process.py`) or an engine in
this process (`service/app.py`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from service.api import health, metrics, models, playground, repository, sessions, ws
from service.api.deps import Services
from service.api.docs import install as install_docs
from service.api.errors import install_error_handlers
from service.api.middleware.auth import AuthMiddleware
from service.api.middleware.limits import GuardMiddleware
from service.api.middleware.observe import ObserveMiddleware
from service.api.openai.router import compat_router as openai_compat_router
from service.api.openai.router import router as openai_router
from service.api.openapi import install as install_openapi
from service.api.router_bypass import DirectRoutes
from service.api.v2 import repository as v2_repository
from service.api.v2.router import router as v2_router
from service.heap import freeze_startup_heap
from service.keys import Keys, reload_on_sighup
from service.logging import configure_logging
from service.metrics import Metrics
from service.protocol.client import EngineClient
from service.settings import Settings

# How the app reaches its engine: entered by the app's lifespan (with the app, for what it may
# leave on `app.state`, and this process's metrics), it yields the client every route uses.
EngineSource = Callable[[FastAPI, Metrics], AbstractAsyncContextManager[EngineClient]]


def api_app(
    settings: Settings,
    engine: EngineSource,
    *,
    configure_logs: bool = True,
    direct_routes: bool = True,
) -> FastAPI:
    """The app. `direct_routes=False` leaves every request to FastAPI's router (the tests
    compare the two)."""
    if configure_logs:
        configure_logging(settings.log_level, settings.log_json)
    keys = Keys.from_settings(settings)  # a broken keys file is fatal here, never on reload

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        m = Metrics()
        async with engine(app, m) as client:
            services = app.state.services = Services(settings, client, m)
            async with AsyncExitStack() as stack:
                if settings.grpc_port is not None:
                    # imported only when on: grpcio costs an API process ~10 MB
                    from service.api.grpc.server import grpc_server

                    grpc = await stack.enter_async_context(grpc_server(services, keys))
                    app.state.grpc_port = grpc.port
                    # its drain starts with HTTP's (`http_server.py`), not after it
                    app.state.drain_hooks.append(grpc.drain)
                freeze_startup_heap()
                with reload_on_sighup(keys):
                    yield

    app = FastAPI(
        title="rnnserve",
        summary="Stateful LSTM/GRU serving: predictions, streaming generation, sessions.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # served by service/api/docs.py, with its assets (no CDN)
        redoc_url=None,
        # FastAPI's own OpenTelemetry (on by default since 0.165 once a global provider is
        # set): our spans cover the request (service/tracing.py, which sets none), its would
        # be a second server span of each, and even unused its per-request check of the
        # global providers cost ~4 us a request
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    install_error_handlers(app)
    install_docs(app)
    for r in (health.router, metrics.router, models.router, sessions.router, ws.router):
        app.include_router(r)
    app.include_router(repository.router)
    app.include_router(v2_router)
    app.include_router(v2_repository.router)
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
    app.state.drain_hooks = []  # called as the server begins to drain (`http_server.py`)
    return app
