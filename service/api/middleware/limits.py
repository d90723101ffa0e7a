"""Limits and back-pressure at the ASGI edge, for every surface (pure ASGI, no per-request task).

* **Body size**: a `Content-Length` over `max_body_bytes` is 413 at once; a chunked body is
  counted as it is read and refused (413) the moment it passes the limit.
* **Request timeout**: a request must START its response within `request_timeout_s`, else it is
  cancelled (its work commits nothing: session operations are atomic) and answered 504
  `timeout`. A stream starts at once; its length is bounded by `max_tokens`.
* **Stalled clients**: every send to the client (a response chunk, an SSE frame, a WebSocket
  message) must be taken within `send_timeout_s`; a client that stops reading is dropped: the
  exception cancels its generation (nothing committed), the decode slot and the session lock
  are freed, and the connection is aborted (a graceful close would wait to flush what the
  client never reads). The engine never waits on a consumer: a stream's unread events are
  bounded by `stream_buffer_bytes` (`client_too_slow` past it) where they wait for the
  client: `engine/stream.py` in one process, `engine/remote_streams.py` in a worker.
* **Concurrent streams**: generations (native and session generate, completions) and
  WebSocket connections hold a slot from the engine (`engine/stream_slots.py`), which counts
  them for the whole replica, across all its workers: `max_open_streams` (503 `overloaded`,
  keys on or off) and `max_streams_per_key` per owner (429 `stream_limit`, Retry-After).
  An HTTP stream's slot is taken by its generation (the route opens it under the hold this
  leaves in the scope's state, `HOLD_KEY`; under a
  refused slot the generation raises the refusal instead of starting, and the surface answers
  it); a WebSocket's is confirmed before the app accepts it (refused: closed 1013).

Errors are answered in the shape of the surface the path belongs to (`service/api/surfaces.py`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.http_protocol import ABORT
from service.api.middleware.deadlines import Deadlines
from service.api.surfaces import error_response_parts, is_stream, surface_of
from service.errors import ServiceError
from service.logging import get_logger
from service.protocol.client import EngineClient, StreamHold
from service.settings import Settings

log = get_logger("limits")

OWNER_KEY = "rnnserve.owner"  # where AuthMiddleware leaves the caller's owner in scope["state"]
HOLD_KEY = "rnnserve.stream_hold"  # where this leaves a stream's slot (`deps.get_hold`)


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class RequestTimeout(ServiceError):
    status, code = 504, "timeout"

    @classmethod
    def after(cls, seconds: float) -> RequestTimeout:
        """The answer to a request that did not complete within `seconds` (every surface's)."""
        return cls(
            f"the request did not complete within {seconds:g} s; retry later",
            headers={"Retry-After": "1"},
        )


class ClientStalled(Exception):
    """The client did not take a response chunk in time; the response is abandoned."""


async def send_error(scope: Scope, send: Send, err: ServiceError) -> None:
    status, shaped = error_response_parts(scope.get("path", ""), err)
    body = json.dumps(shaped).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _is_stream(scope: Scope) -> bool:
    return scope["type"] == "websocket" or is_stream(scope["method"], scope["path"])


class SendWatch:
    """A send that raises `ClientStalled` once it has been pending longer than `timeout`.

    The semantics of `asyncio.timeout` around every send, at a fraction of the cost: a stream
    sends one frame per token, and a timer per send (created, pushed on the loop's heap,
    cancelled) cost ~9 us under load, about as much as the model step itself at 256 streams.
    Here a send only stamps its start; ONE timer per connection, armed lazily, checks the stamp
    when it fires and re-arms itself for the pending send's deadline. An overdue send's task is
    cancelled, and the send turns that cancellation into `ClientStalled` (the app's `finally`
    blocks then release its generation, decode slot and session lock, as with a disconnect).
    """

    __slots__ = (
        "_cancelling",
        "_loop",
        "_send",
        "_started",
        "_task",
        "_timeout",
        "_timer",
        "fired",
    )

    def __init__(self, send: Send, timeout: float) -> None:
        self._send = send
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._started: float | None = None  # loop time at which the pending send began
        self._task: asyncio.Task[Any] | None = None  # the task performing it
        self._cancelling = 0
        self._timer: asyncio.TimerHandle | None = None
        self.fired = False

    async def __call__(self, message: Message) -> None:
        if self.fired:
            raise ClientStalled
        task = self._task = asyncio.current_task()
        self._cancelling = task.cancelling() if task is not None else 0
        self._started = now = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_at(now + self._timeout, self._check)
        try:
            await self._send(message)
        except asyncio.CancelledError:
            # ours (as asyncio.timeout tells): the client stalled; anyone else's: propagate
            if self.fired and task is not None and task.uncancel() <= self._cancelling:
                raise ClientStalled from None
            raise
        finally:
            self._started = None

    def _check(self) -> None:
        self._timer = None
        started = self._started
        if started is None or self.fired:
            return  # nothing pending: the next send re-arms
        due = started + self._timeout
        if self._loop.time() >= due and self._task is not None:
            self.fired = True
            self._task.cancel()
        else:
            self._timer = self._loop.call_at(due, self._check)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class GuardMiddleware:
    """Body size, request timeout, stalled clients, stream caps (see the module doc)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.max_body = settings.max_body_bytes
        self.request_timeout = settings.request_timeout_s
        self.deadlines = Deadlines()  # one timer for every request's deadline
        self.send_timeout = settings.send_timeout_s
        self.debug_bodies = settings.debug_log_bodies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        hold: StreamHold | None = None
        if _is_stream(scope):
            owner: str | None = (scope.get("state") or {}).get(OWNER_KEY)
            client: EngineClient = scope["app"].state.services.client
            # the engine counts every worker's streams (engine/stream_slots.py); nothing waits
            # here: the request's generation takes the slot or raises its refusal
            hold = client.hold_stream(owner)
            scope.setdefault("state", {})[HOLD_KEY] = hold
        watch = SendWatch(send, self.send_timeout)
        try:
            if scope["type"] == "http":
                await self._http(scope, receive, watch)
            elif hold is not None and not await _confirmed(hold, send):
                return
            else:
                await self.app(scope, receive, watch)
        except ClientStalled:
            log.warning("client stalled; response dropped", extra={"path": scope["path"]})
            # free the socket now: a graceful close would wait to flush what it never reads
            abort = (scope.get("extensions") or {}).get(ABORT)
            if abort is not None:
                abort()
        finally:
            watch.close()
            if hold is not None:
                hold.release()

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        length = _content_length(scope)
        if length is not None and length > self.max_body:
            await send_error(scope, send, self._too_large(length))
            return
        has_body = (length is not None and length > 0) or (
            length is None and _header(scope, b"transfer-encoding") is not None
        )
        if has_body and scope["method"] in _BODY_METHODS:
            declared = _header(scope, b"content-type")
            wrong = surface_of(scope["path"]).media_type_error(
                None if declared is None else declared.decode("latin-1")
            )
            if wrong is not None:
                await send_error(scope, send, wrong)
                return
        seen = 0
        # JSON object keys so far, counted as `":` not escaped (inside a string a `"` is `\"`);
        # not in a compressed body or after a v2 binary header, whose bytes are not JSON text
        count_keys = _header(scope, b"content-encoding") is None and (
            _header(scope, b"inference-header-content-length") is None
        )
        keys = 0
        tail = b""  # the last byte of the previous chunk (a `":` may straddle two)
        refused = False  # the 413 went out: the app sees a disconnect and its answer is dropped
        logged: list[bytes] = []

        async def counted_receive() -> Message:
            nonlocal seen, keys, tail, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                chunk: bytes = message.get("body", b"")
                if not seen and _utf16_or_32(chunk):  # json.loads(bytes) would take it
                    refused = True
                    await send_error(scope, send, _NOT_UTF8)
                    return {"type": "http.disconnect"}
                seen += len(chunk)
                if seen > self.max_body:
                    refused = True
                    await send_error(scope, send, self._too_large(seen))
                    return {"type": "http.disconnect"}
                if count_keys:
                    keys += chunk.count(b'":') - chunk.count(b'\\":')
                    keys += tail == b'"' and chunk[:1] == b":"
                    tail = chunk[-1:]
                if keys > MAX_BODY_KEYS:
                    refused = True
                    await send_error(scope, send, _TOO_MANY_KEYS)
                    return {"type": "http.disconnect"}
                if self.debug_bodies and sum(map(len, logged)) < 4096:
                    logged.append(chunk)
            return message

        started = False
        task = asyncio.current_task()
        assert task is not None  # uvicorn runs each request in a task of its own
        cancelling = task.cancelling()
        deadlines = self.deadlines
        deadlines.add(task, self.request_timeout)

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
                deadlines.discard(task)  # the body (a stream) may take longer
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except asyncio.CancelledError:
            # ours only if the sweeper cancelled it and nobody else did (as `asyncio.timeout`)
            if not deadlines.expired(task) or task.uncancel() > cancelling:
                raise
            if started or refused:  # pragma: no cover (the deadline is off by then)
                raise ClientStalled from None
            await send_error(scope, send, RequestTimeout.after(self.request_timeout))
        finally:
            deadlines.discard(task)
            if logged:
                log.debug(
                    "request body",
                    extra={
                        "path": scope["path"],
                        "body": b"".join(logged)[:4096].decode("utf-8", "replace"),
                    },
                )

    def _too_large(self, n: int) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"the request body is {n}+ bytes; the limit is {self.max_body} "
            "(RNNSERVE_MAX_BODY_BYTES)",
            field="body",
        )


async def _confirmed(hold: StreamHold, send: Send) -> bool:
    """Whether the engine granted a WebSocket's stream slot; if not, the socket is accepted and
    closed 1013 ("try again later") with the refusal's code and message (`overloaded`,
    `stream_limit`, `engine_unavailable`). A close before the accept would reach the client as
    an HTTP 403 with an empty body, which reads like a bad key."""
    try:
        await hold.confirmed()
        return True
    except ServiceError as err:
        reason = f"{err.code}: {err.message}"
        if len(reason.encode()) > 123:  # a close frame's reason is at most 123 bytes
            reason = reason.encode()[:120].decode(errors="ignore") + "..."
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1013, "reason": reason})
        return False


_BODY_METHODS = frozenset(("POST", "PUT", "PATCH"))
# No request of any surface has more than a few hundred object keys (the schemas cap maps at 64
# entries and lists at 4,096 items, and v2 at 64 tensors). A body of a million unknown keys
# cost a transient +171-206 MB and ~1.2 s of the loop to parse before its refusal; counted as
# it arrives (a `":` that is not `\":` per key: a `"` inside a string is escaped), it is
# refused unparsed. (Keys crafted to end in a backslash escape the count; they then cost the
# parse, as before.)
MAX_BODY_KEYS = 10_000
_TOO_MANY_KEYS = ServiceError(
    f"the body has more than {MAX_BODY_KEYS} JSON object keys; no request needs that many",
    status=400,
    code="invalid_json",
    field="body",
)
_NOT_UTF8 = ServiceError(
    "the body is UTF-16 or UTF-32; JSON bodies must be UTF-8 (RFC 8259)",
    status=415,
    code="unsupported_media_type",
    field="body",
)


def _utf16_or_32(first: bytes) -> bool:
    """Whether a body's first bytes are UTF-16/32 JSON (a byte-order mark, or a NUL byte among
    the first two: JSON text starts with an ASCII character)."""
    return first[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in first[:2]


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope.get("headers", []):
        if k == name:
            return bytes(v)
    return None


def _content_length(scope: Scope) -> int | None:
    for k, v in scope.get("headers", []):
        if k == b"content-length":
            try:
                return int(v)
            except ValueError:
                return None
    return None
