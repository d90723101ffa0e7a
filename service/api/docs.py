"""`/docs` (Swagger UI) and `/redoc` served with their scripts and styles from this server.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so on a machine without internet (an
air-gapped cluster, a laptop on a plane) they were blank, and the playground linked there. The
assets come from the `fastapi-offline` package (Swagger UI's and ReDoc's release files, MIT),
served under `/docs/static/`; nothing on either page reaches outside the server.
"""

from __future__ import annotations

import functools
from importlib import resources
from importlib.resources.abc import Traversable

from fastapi import FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

STATIC = "/docs/static"
# ReDoc's footer logo is the one thing either page would fetch from outside: it comes from here
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


def _assets() -> Traversable:
    return resources.files("fastapi_offline") / "static"


@functools.cache
def _redoc_js() -> bytes:
    js = (_assets() / "redoc.standalone.js").read_bytes()
    return js.replace(REDOC_LOGO.encode(), f"{STATIC}/favicon.png".encode())


def install(app: FastAPI) -> None:
    """Add the two pages (the app is created with `docs_url=None, redoc_url=None`)."""

    @app.get(f"{STATIC}/redoc.standalone.js", include_in_schema=False)
    async def redoc_js() -> Response:  # before the mount below, which would answer it first
        return Response(_redoc_js(), media_type="text/javascript")

    app.mount(STATIC, StaticFiles(directory=str(_assets())), name="docs-static")
    title = f"{app.title} API"
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2 = "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=title,
            oauth2_redirect_url=oauth2,
            swagger_js_url=f"{STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{STATIC}/favicon.png",
        )

    @app.get(oauth2, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=title,
            redoc_js_url=f"{STATIC}/redoc.standalone.js",
            redoc_favicon_url=f"{STATIC}/favicon.png",
            with_google_fonts=False,
        )
