"""`serve(settings)`: run the app under uvicorn with graceful shutdown (drains in-flight work)."""

from __future__ import annotations

import uvicorn

from service.app import create_app
from service.settings import Settings


def serve(settings: Settings | None = None) -> None:
    settings = settings or Settings()
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,  # our JSON logging (service.logging) is configured by create_app
        access_log=False,  # the app logs one line per request itself, with its request id
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s) or None,
        lifespan="on",
    )
    uvicorn.Server(config).run()
