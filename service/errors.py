"""One exception hierarchy for every client-visible failure.

Each error carries an HTTP status and a stable machine-readable `code`. The API layer maps them
to HTTP responses in one place (`service.api.errors`) and to stream events in one place
(`stream_error`); the engine raises them and knows nothing about HTTP.
"""

from __future__ import annotations

from typing import Any

# every ServiceError class by its code (the first class to name one): what an error that crossed
# the wire is raised again as (`transport/wire.py`)
_BY_CODE: dict[str, type[ServiceError]] = {}


def error_class(code: str) -> type[ServiceError]:
    """The class registered for `code`; a plain `ServiceError` for a code nothing registered."""
    return _BY_CODE.get(code, ServiceError)


class ServiceError(Exception):
    status: int = 500
    code: str = "internal_error"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "code" in cls.__dict__:  # a class that names its own code is known by it
            _BY_CODE.setdefault(cls.code, cls)

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        status: int | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            err["field"] = self.field
        return {"error": err}


class InvalidInput(ServiceError):
    status, code = 422, "invalid_input"


class UnknownCharacters(InvalidInput):
    code = "unknown_characters"


class UnsupportedTask(ServiceError):
    status, code = 400, "unsupported_task"


class ModelNotFound(ServiceError):
    status, code = 404, "model_not_found"


class SessionNotFound(ServiceError):
    status, code = 404, "session_not_found"


class SessionExpired(ServiceError):
    status, code = 404, "session_expired"


class SessionEvicted(ServiceError):
    status, code = 404, "session_evicted"


class SessionExists(ServiceError):
    status, code = 409, "session_exists"


class VersionConflict(ServiceError):
    status, code = 409, "version_conflict"


class ModelChanged(ServiceError):
    """The state was made by another graph of the model (its sha256 differs): never fed."""

    status, code = 409, "model_changed"


class IdempotencyKeyReused(ServiceError):
    status, code = 422, "idempotency_key_reused"


class SequenceError(ServiceError):
    """A v2 sequence request that its sequence cannot take (unknown id, other model, ...)."""

    status, code = 400, "sequence_error"


class InvalidState(ServiceError):
    status, code = 422, "invalid_state"


class SessionLimit(ServiceError):
    status, code = 429, "session_limit"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class Overloaded(ServiceError):
    status, code = 503, "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after_s)})


class StreamLimit(ServiceError):
    """The caller's API key has `max_streams_per_key` streams open."""

    status, code = 429, "stream_limit"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "1"})


class StoreUnavailable(Overloaded):
    code = "store_unavailable"


class EngineError(ServiceError):
    """onnxruntime failed on a batch; every request in that batch gets it."""

    status, code = 500, "engine_error"


def stream_error(exc: BaseException) -> dict[str, Any]:
    """The payload of a stream's `error` event (SSE and WebSocket) for any exception."""
    if isinstance(exc, ServiceError):
        return exc.body()
    return ServiceError("internal error").body()
