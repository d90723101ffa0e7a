"""`/playground`: a small page (plain HTML/JS/CSS from `service/playground/`, no build step) to try
the models: streamed generation with sampling controls, and live sentiment through a session.
Also the site's icon, at `/favicon.ico` (where browsers look) and under `/playground/` (what the
page links: that prefix needs no API key when keys are on)."""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from starlette.responses import Response

from service.playground import favicon

router = APIRouter(include_in_schema=False)

_FILES = {
    "index.html": "text/html; charset=utf-8",
    "playground.js": "text/javascript; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
}
# same-origin only: the page talks to this server and loads nothing from elsewhere
_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'",
}


@cache
def _read(name: str) -> bytes:
    return (resources.files("service.playground") / name).read_bytes()


def _file(name: str) -> Response:
    return Response(_read(name), media_type=_FILES[name], headers=_HEADERS)


@router.get("/playground")
async def page() -> Response:
    return _file("index.html")


@router.get("/playground/playground.js")
async def script() -> Response:
    return _file("playground.js")


@router.get("/playground/playground.css")
async def style() -> Response:
    return _file("playground.css")


@router.get("/favicon.ico")
@router.get("/playground/favicon.ico")
async def icon() -> Response:
    return Response(
        favicon.ico(), media_type="image/x-icon", headers={"Cache-Control": "max-age=86400"}
    )
