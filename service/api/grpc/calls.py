"""What every gRPC call goes through, as an HTTP request goes through the middleware: the API
key (metadata `authorization: Bearer <key>`), the request timeout, the error mapping (a
`ServiceError` -> its status code, with v2's message), the request id, metrics and one access
log line.

Status codes follow the HTTP status each error has on the other surfaces, so one error reads
the same everywhere: 400/415/422 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED,
404 NOT_FOUND, 409 FAILED_PRECONDITION, 413 and 429 RESOURCE_EXHAUSTED, 503 UNAVAILABLE,
504 DEADLINE_EXCEEDED, anything else INTERNAL (logged; its details stay in the log). The error's
code (`invalid_tensor`, `session_busy`, ...) rides in the trailing metadata as
`rnnserve-error-code`, a `Retry-After` as `retry-after`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError
from opentelemetry.trace import Status as SpanStatus
from opentelemetry.trace import StatusCode as SpanStatusCode
from opentelemetry.trace import format_trace_id

from service import tracing
from service.api.deps import Services
from service.api.middleware.auth import Unauthorized
from service.api.middleware.limits import RequestTimeout
from service.api.middleware.observe import request_id_of
from service.api.surfaces import v2_error
from service.errors import InvalidInput, ServiceError
from service.keys import Keys
from service.logging import get_logger, request_id
from service.settings import Settings

log = get_logger("grpc")
access = get_logger("app")  # the access log: one line per request, every surface
SERVICE = "inference.GRPCInferenceService"

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_of(e: ServiceError) -> grpc.StatusCode:
    return _CODES.get(e.status, grpc.StatusCode.INTERNAL)


def message_of(e: ServiceError) -> str:
    """The error's message as v2 over HTTP words it (naming the field)."""
    message: str = v2_error(e)[1]["error"]
    return message


def trailers_of(e: ServiceError) -> tuple[tuple[str, str], ...]:
    out = [("rnnserve-error-code", e.code)]
    retry = e.headers.get("Retry-After")
    if retry is not None:
        out.append(("retry-after", retry))
    return tuple(out)


class Malformed:
    """A request message that does not parse: the method answers INVALID_ARGUMENT (grpcio's own
    answer to a deserializer's exception is UNKNOWN, with a logged traceback)."""

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def error(self) -> ServiceError:
        return InvalidInput(f"the message is not a valid {self.type_name}", field="message")


def reader(message_type: Any) -> Callable[[bytes], Any]:
    """A request deserializer that turns bytes that do not parse into `Malformed`."""
    name = message_type.DESCRIPTOR.full_name

    def read(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except DecodeError:
            return Malformed(name)

    return read


def metadata(context: grpc.aio.ServicerContext, name: str) -> str | None:
    for k, v in context.invocation_metadata() or ():
        if k == name:
            return v if isinstance(v, str) else v.decode("latin-1")
    return None


@dataclass
class Calls:
    """The per-call work shared by every method (`service/api/grpc/servicer.py`)."""

    services: Services
    keys: Keys

    @property
    def settings(self) -> Settings:
        return self.services.settings

    def owner(self, context: grpc.aio.ServicerContext, open_call: bool) -> str | None:
        """The caller's owner name (None with keys off); `open_call`: a health call, open
        when `RNNSERVE_AUTH_OPEN_HEALTH` leaves HTTP's health paths open."""
        if not self.keys.enabled:
            return None
        header = metadata(context, "authorization")
        token = None
        if header is not None:
            scheme, _, rest = header.partition(" ")
            if scheme.lower() == "bearer" and rest.strip():
                token = rest.strip()
        owner = self.keys.owner(token) if token is not None else None
        if owner is None and not (open_call and self.settings.auth_open_health):
            why = "a valid API key is required" if token is None else "the API key is not valid"
            raise Unauthorized(f"{why} (metadata authorization: Bearer <key>)")
        return owner

    @contextlib.asynccontextmanager
    async def serving(
        self, method: str, context: grpc.aio.ServicerContext, open_call: bool = False
    ) -> AsyncIterator[Call]:
        """One call: its request id, span, key check and error mapping; then its metrics and
        access log line. A `ServiceError` (or the request timeout) leaving the block aborts the
        call with its status code and message."""
        t0 = time.perf_counter()
        token = request_id.set(request_id_of(metadata(context, "x-request-id")))
        call = Call()
        carrier = _carrier(context) if tracing.enabled else None
        scope = (
            tracing.server_span(
                f"gRPC {method}",
                carrier,
                {"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": method},
            )
            if tracing.enabled
            else contextlib.nullcontext()
        )
        with scope as span:
            try:
                call.owner = self.owner(context, open_call)
                yield call
            except (ServiceError, TimeoutError) as raised:
                e = (
                    raised
                    if isinstance(raised, ServiceError)
                    else RequestTimeout.after(self.settings.request_timeout_s)
                )
                call.code = status_of(e)
                context.set_trailing_metadata(trailers_of(e))
                await context.abort(call.code, message_of(e))
            except asyncio.CancelledError:
                call.code = grpc.StatusCode.CANCELLED  # the client left or its deadline passed
                raise
            except grpc.aio.AbortError:  # (an abort from inside: already answered)
                raise
            except Exception:
                call.code = grpc.StatusCode.INTERNAL
                log.exception("unexpected error", extra={"route": method})
                await context.abort(call.code, "internal error")
            finally:
                if span is not None:
                    _end_status(span, call.code)
                self._done(method, call, t0, _trace_id(span, carrier))
                request_id.reset(token)

    def _done(self, method: str, call: Call, t0: float, trace_id: str | None) -> None:
        dt = time.perf_counter() - t0
        route = f"/{SERVICE}/{method}"
        self.services.metrics.request_done(route, "GRPC", call.code.name, dt)
        extra: dict[str, Any] = {
            "method": "GRPC",
            "route": route,
            "status": call.code.name,
            "ms": round(dt * 1e3, 2),
            "key_name": call.owner,  # the key's name, never the key (as HTTP's line)
        }
        if trace_id is not None:
            extra["trace_id"] = trace_id
        access.info("request", extra=extra)


@dataclass
class Call:
    """What the access log says of a call: its status code and the caller's key name."""

    code: grpc.StatusCode = grpc.StatusCode.OK
    owner: str | None = None


# a call the server failed (its span an error); the rest are the caller's (as HTTP's 4xx)
_SERVER_FAULTS = frozenset(
    (
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.UNIMPLEMENTED,
    )
)


def _end_status(span: tracing.Span, code: grpc.StatusCode) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in _SERVER_FAULTS:
        span.set_status(SpanStatus(SpanStatusCode.ERROR, code.name))
    else:  # OK is final: the abort leaving the block does not turn a client's mistake red
        span.set_status(SpanStatus(SpanStatusCode.OK))


def _carrier(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """The W3C trace context in a call's metadata."""
    out = {}
    for name in ("traceparent", "tracestate"):
        value = metadata(context, name)
        if value is not None:
            out[name] = value
    return out


def _trace_id(span: tracing.Span | None, carrier: dict[str, str] | None) -> str | None:
    """The trace id to log (tracing on): a sampled call's, or the caller's own."""
    if span is not None:
        return format_trace_id(span.context.trace_id)
    return tracing.caller_trace_id(carrier) if carrier else None


Req = TypeVar("Req")
Resp = TypeVar("Resp")
Unary = Callable[[Any, Req, grpc.aio.ServicerContext, str | None], Awaitable[Resp]]


def unary(
    method: str, *, open_call: bool = False
) -> Callable[[Unary[Req, Resp]], Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]]:
    """A unary method of a servicer holding `calls: Calls`: `fn(self, request, context, owner)`
    under the key check, the request timeout, the error mapping, metrics and the access log."""

    def wrap(
        fn: Unary[Req, Resp],
    ) -> Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]:
        async def handler(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
            calls: Calls = self.calls
            async with calls.serving(method, context, open_call) as call:
                if isinstance(request, Malformed):
                    raise request.error()
                async with asyncio.timeout(calls.settings.request_timeout_s):
                    return await fn(self, request, context, call.owner)
            raise AssertionError("unreachable")  # pragma: no cover (an error aborts the call)

        handler.__name__ = handler.__qualname__ = method
        return handler

    return wrap
