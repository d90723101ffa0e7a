"""Typed errors mirroring the service's stable error codes (`{"error": {"code", ...}}`).

Catch a family (`NotFound`, `SessionGone`, `Conflict`, `InvalidInput`, `Unavailable`) or one exact
case (`SessionExpired`, `VersionConflict`, ...). Every error keeps the HTTP status, the code, the
message and, for input errors, the request field at fault.
"""

from __future__ import annotations

from typing import Any


class RnnserveError(Exception):
    """Base of every error this client raises."""

    status: int | None = None
    code: str = "error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        field: str | None = None,
        retry_after: float | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.field = field
        self.retry_after = retry_after
        self.body = body

    def __str__(self) -> str:
        where = f" [{self.field}]" if self.field else ""
        status = f"{self.status} " if self.status is not None else ""
        return f"{status}{self.code}{where}: {self.message}"


class TransportError(RnnserveError):
    """The server could not be reached, or the connection broke, after every retry."""

    code = "transport_error"


class StreamInterrupted(TransportError):
    """A stream ended without its terminal `done`/`error` event (e.g. the connection dropped)."""

    code = "stream_interrupted"


# -- 4xx -------------------------------------------------------------------------------------


class BadRequest(RnnserveError):
    status, code = 400, "bad_request"


class UnsupportedTask(BadRequest):
    """E.g. generating with a classifier."""

    code = "unsupported_task"


class InvalidInput(RnnserveError):
    """422: `field` names the offending field (e.g. `inputs[3]`, `max_tokens`)."""

    status, code = 422, "invalid_input"


class InvalidJSON(InvalidInput):
    status, code = 400, "invalid_json"


class UnknownCharacters(InvalidInput):
    code = "unknown_characters"


class InvalidState(InvalidInput):
    """An imported state blob is corrupt or belongs to another model."""

    code = "invalid_state"


class IdempotencyKeyReused(InvalidInput):
    code = "idempotency_key_reused"


class NotFound(RnnserveError):
    status, code = 404, "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class SessionGone(NotFound):
    """The session cannot be used any more: never created, expired, or evicted."""

    code = "session_not_found"


class SessionNotFound(SessionGone):
    code = "session_not_found"


class SessionExpired(SessionGone):
    code = "session_expired"


class SessionEvicted(SessionGone):
    code = "session_evicted"


class Conflict(RnnserveError):
    status, code = 409, "conflict"


class VersionConflict(Conflict):
    """`expected_version` did not match the session's version."""

    code = "version_conflict"


class SessionExists(Conflict):
    code = "session_exists"


class ModelChanged(Conflict):
    code = "model_changed"


# -- capacity and server failures --------------------------------------------------------------


class Unavailable(RnnserveError):
    """The server refused for now (429/503); `retry_after` says when to try again."""


class SessionLimit(Unavailable):
    status, code = 429, "session_limit"


class StreamLimit(Unavailable):
    """This API key has as many streams open as `max_streams_per_key` allows."""

    status, code = 429, "stream_limit"


class Overloaded(Unavailable):
    status, code = 503, "overloaded"


class StoreUnavailable(Overloaded):
    code = "store_unavailable"


class ShuttingDown(Overloaded):
    code = "shutting_down"


class ServerError(RnnserveError):
    status, code = 500, "internal_error"


class EngineError(ServerError):
    code = "engine_error"


_BY_CODE: dict[str, type[RnnserveError]] = {
    c.code: c
    for c in (
        BadRequest,
        UnsupportedTask,
        InvalidInput,
        InvalidJSON,
        UnknownCharacters,
        InvalidState,
        IdempotencyKeyReused,
        NotFound,
        ModelNotFound,
        SessionNotFound,
        SessionExpired,
        SessionEvicted,
        VersionConflict,
        SessionExists,
        ModelChanged,
        SessionLimit,
        StreamLimit,
        Overloaded,
        StoreUnavailable,
        ShuttingDown,
        ServerError,
        EngineError,
    )
}
_BY_STATUS: dict[int, type[RnnserveError]] = {
    400: BadRequest,
    404: NotFound,
    409: Conflict,
    422: InvalidInput,
    429: Unavailable,
    502: Unavailable,
    503: Overloaded,
    504: Unavailable,
}


def error_from_body(
    status: int | None, body: Any, retry_after: float | None = None
) -> RnnserveError:
    """The typed error for an error body (HTTP response or stream `error` event)."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        text = str(body)[:500] if body else "no error body"
        cls = _BY_STATUS.get(status or 0, ServerError if (status or 500) >= 500 else RnnserveError)
        return cls(text, status=status, retry_after=retry_after)
    code = str(err.get("code", "error"))
    cls = (
        _BY_CODE.get(code)
        or _BY_STATUS.get(status or 0)
        or (ServerError if (status or 500) >= 500 else RnnserveError)
    )
    return cls(
        str(err.get("message", "")),
        status=status,
        code=code,
        field=err.get("field"),
        retry_after=retry_after,
        body=body,
    )
