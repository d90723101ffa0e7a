"""The one registry of the server's surfaces: which paths each owns, the error shape it answers
in, its stream routes and the paths it leaves open (no API key).

Everything that decides by path reads it: the error handlers (an unmatched `/v2/...` path answers
in v2's shape, so tritonclient can read it), the limits middleware (error shapes, which requests
are streams), the auth middleware (open paths) and the OpenAPI patcher (error schemas, security).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from service.errors import ServiceError
from service.settings import Settings


def native_error(e: ServiceError) -> tuple[int, dict[str, Any]]:
    return e.status, e.body()


def foreign_status(e: ServiceError) -> int:
    """A foreign protocol has no 422: the native invalid-input status is its 400."""
    return 400 if e.status == 422 else e.status


def v2_error(e: ServiceError) -> tuple[int, dict[str, Any]]:
    msg = e.message  # the v2 body has no field: name it in the message
    if e.field and e.field not in msg:
        msg = f"{e.field}: {msg}"
    return foreign_status(e), {"error": msg}


def openai_body(message: str, status: int, param: str | None, code: str | None) -> dict[str, Any]:
    kind = (
        "server_error"
        if status >= 500
        else "rate_limit_error"
        if status == 429
        else "invalid_request_error"
    )
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def openai_error(e: ServiceError) -> tuple[int, dict[str, Any]]:
    status = foreign_status(e)
    return status, openai_body(e.message, status, e.field, e.code)


@dataclass(frozen=True)
class Surface:
    name: str
    prefixes: tuple[str, ...]  # the paths it owns: these, and anything under them
    error: Callable[[ServiceError], tuple[int, dict[str, Any]]]  # (status, body) of a failure
    streams: tuple[str, ...] = ()  # POST paths ending so answer a stream (SSE)
    suffixes: tuple[str, ...] = ()  # paths ending so belong to it too (`/v1/completions`)
    bodies: tuple[str, ...] = ()  # media types its request bodies may declare (none: unchecked)
    undeclared: bool = False  # whether a body without a Content-Type is read (as JSON)
    # `prefixes` as folders, for one C-level `startswith` per surface: every request asks which
    # surface it belongs to, and a loop over the prefixes was ~4 % of a worker's CPU (py-spy)
    _folders: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_folders", tuple(x + "/" for x in self.prefixes))

    def owns(self, path: str) -> bool:
        p = path.rstrip("/") or "/"
        return (
            p in self.prefixes
            or p.startswith(self._folders)
            or (bool(self.suffixes) and p.endswith(self.suffixes))
        )

    def is_stream(self, method: str, path: str) -> bool:
        return method == "POST" and path.rstrip("/").endswith(self.streams)

    def media_type_error(self, content_type: str | None) -> ServiceError | None:
        """Why a body declared as `content_type` (None: not declared) is refused here (415), or
        None."""
        if not self.bodies or (content_type is None and self.undeclared):
            return None
        want = " or ".join(self.bodies)
        if content_type is None:
            return ServiceError(
                f"the body has no Content-Type; send {want}",
                status=415,
                code="unsupported_media_type",
                field="content-type",
            )
        media, _, params = content_type.partition(";")
        media = media.strip().lower()
        if media not in self.bodies:
            return ServiceError(
                f"Content-Type {media or content_type.strip()!r} is not accepted here; send {want}",
                status=415,
                code="unsupported_media_type",
                field="content-type",
            )
        for p in params.split(";"):
            name, _, value = p.partition("=")
            charset = value.strip().strip('"').lower()
            if name.strip().lower() == "charset" and charset not in ("utf-8", "utf8"):
                return ServiceError(
                    f"charset {charset!r} is not accepted: JSON bodies are UTF-8 (RFC 8259)",
                    status=415,
                    code="unsupported_media_type",
                    field="content-type",
                )
        return None


JSON = ("application/json",)
# (tritonclient sends no Content-Type at all)
V2 = Surface("v2", ("/v2",), v2_error, bodies=(*JSON, "application/octet-stream"), undeclared=True)
OPENAI = Surface(
    "openai",
    ("/openai",),
    openai_error,
    streams=("/completions",),
    suffixes=("/completions",),
    bodies=JSON,
)
HEALTH = Surface("health", ("/healthz", "/readyz"), native_error)
METRICS = Surface("metrics", ("/metrics",), native_error)
DOCS = Surface(
    "docs",
    ("/docs", "/redoc", "/openapi.json", "/favicon.ico", "/playground"),
    native_error,
)
NATIVE = Surface("native", ("/v1",), native_error, streams=("/generate",), bodies=JSON)
# most specific first: /v1/completions is OpenAI's, the rest of /v1 native; unknown paths native
SURFACES = (V2, OPENAI, HEALTH, METRICS, DOCS, NATIVE)


def surface_of(path: str) -> Surface:
    return next((s for s in SURFACES if s.owns(path)), NATIVE)


def error_response_parts(path: str, e: ServiceError) -> tuple[int, dict[str, Any]]:
    """`e` as the surface serving `path` answers it: (status, JSON body)."""
    return surface_of(path).error(e)


def is_stream(method: str, path: str) -> bool:
    return surface_of(path).is_stream(method, path)


def open_paths(settings: Settings) -> tuple[set[str], tuple[str, ...]]:
    """(exact paths, prefixes) that need no API key, per the settings."""
    exact: set[str] = set()
    prefixes: list[str] = []
    if settings.auth_open_health:
        exact |= {"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"}
    if settings.auth_open_metrics:
        exact.add("/metrics")
    if settings.auth_open_docs:
        exact |= {"/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect", "/favicon.ico"}
        prefixes.append("/playground")  # the page; its API calls send the key
        prefixes.append("/docs/static/")  # the docs pages' scripts and styles
    return exact, tuple(prefixes)


# open whatever the settings say (the OpenAPI document marks them as needing no key)
ALWAYS_DOCUMENTED_OPEN = {"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"}
