"""THE mapping of errors to HTTP responses: `{"error": {"code", "message", "field"?}}`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match, Route

from service.api.surfaces import error_response_parts
from service.errors import ServiceError
from service.logging import get_logger

log = get_logger("api")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. `session_not_found`.")
    message: str = Field(description="Human-readable explanation.")
    field: str | None = Field(None, description="The request field at fault, when there is one.")


class ErrorBody(BaseModel):
    error: ErrorDetail = Field(description="What went wrong.")


def error_response(exc: ServiceError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def service_error_response(exc: ServiceError) -> JSONResponse:
    """A `ServiceError` a native handler raised, as its response (a 5xx is logged)."""
    if exc.status >= 500:
        log.error("request failed", extra={"code": exc.code, "reason": exc.message})
    return error_response(exc)


def field_of(loc: Sequence[int | str]) -> str:
    """("body", "inputs", 3) -> "inputs[3]"; ("header", "idempotency-key") -> "Idempotency-Key"."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        kind = parts.pop(0)
        if kind == "header" and parts:
            return "-".join(w.capitalize() for w in str(parts[0]).split("-"))
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


def validation_error(exc: RequestValidationError) -> ServiceError:
    errors: list[dict[str, Any]] = list(exc.errors())
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    field = field_of(first.get("loc", ("body",)))
    if first.get("type") == "json_invalid":
        return ServiceError(
            f"body is not valid JSON: {first.get('msg')}",
            status=400,
            code="invalid_json",
            field="body",
        )
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return ServiceError(
        f"{field}: {first.get('msg')}{more}", status=422, code="invalid_input", field=field
    )


def install_error_handlers(app: FastAPI) -> None:
    async def on_service(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        return service_error_response(exc)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_error(exc))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        err = http_error(exc)
        if exc.status_code == 405:  # every method the path serves, not the first route's
            err.headers["Allow"] = ", ".join(_allowed(request))
        # an unmatched path answers in the shape of the surface its prefix names (an unknown
        # /v2/... path in v2's, which tritonclient reads), not always the native one
        status, body = error_response_parts(request.url.path, err)
        return JSONResponse(body, status_code=status, headers=err.headers)

    async def on_disconnect(_: Request, exc: Exception) -> JSONResponse:
        # the client left while its body was being read (or the body passed the size limit,
        # and the 413 already went out): nothing to answer, nothing to log as an error
        log.debug("client disconnected before its request body was complete")
        return error_response(
            ServiceError(
                "the client disconnected before its request body was complete",
                status=400,
                code="client_disconnected",
                field="body",
            )
        )

    async def on_other(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(ServiceError("internal error"))

    app.add_exception_handler(ServiceError, on_service)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(ClientDisconnect, on_disconnect)
    app.add_exception_handler(Exception, on_other)


def http_error(exc: StarletteHTTPException) -> ServiceError:
    """A framework HTTP error as a `ServiceError`; a body FastAPI could not read (invalid
    UTF-8, ...) says so instead of "There was an error parsing the body"."""
    cause = exc.__cause__
    if exc.status_code == 400 and cause is not None:
        what = (
            f"not valid UTF-8 ({cause.reason} at byte {cause.start})"
            if isinstance(cause, UnicodeDecodeError)
            else f"unreadable ({type(cause).__name__})"
        )
        return ServiceError(
            f"body is not valid JSON: it is {what}", status=400, code="invalid_json", field="body"
        )
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    err = ServiceError(str(exc.detail), status=exc.status_code, code=code)
    err.headers = dict(exc.headers or {})
    return err


def _allowed(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "_"})
        if match != Match.NONE and isinstance(route, APIRoute | Route):
            methods |= route.methods or set()
    return sorted(methods)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: the error body for each status it can return."""
    return {s: {"model": ErrorBody, "description": _DESCRIPTIONS.get(s, "Error")} for s in statuses}


_DESCRIPTIONS = {
    400: "Bad request (e.g. malformed JSON, generation on a classifier)",
    404: "Unknown model, or session not found / expired / evicted",
    409: "`expected_version` mismatch, session id taken, or model changed",
    422: "Invalid input; `error.field` names the field",
    429: "Live-session cap reached (Retry-After)",
    503: "Queue full or shutting down (Retry-After)",
}
