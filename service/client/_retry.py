"""The retry policy (`Retry`) and one call's way through it (`Attempts`).

Both clients ask `Attempts` after every failed attempt; it answers with the seconds to wait or
raises the error to give up with, so what may be resent is decided here once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import httpx

from service.client._core import Call
from service.client.errors import (
    RnnserveError,
    StreamInterrupted,
    TransportError,
    error_from_body,
)


@dataclass(frozen=True)
class Retry:
    """Automatic retries of transient failures.

    Always retried (the server did not act): connection refused / connect timeout, 429 and 503
    (waiting `Retry-After` when given, capped at `max_retry_after_s`). Retried only for resendable
    calls: a connection that broke after the request was sent, 502 and 504. Every state-changing
    call the client makes is resendable: feed / reset / generate on a session carry an
    `Idempotency-Key` (one per call, the same on each attempt), and session creation uses a
    client-chosen random id. `attempts=1` turns retries off.
    """

    attempts: int = 4
    backoff_s: float = 0.1
    max_backoff_s: float = 4.0
    max_retry_after_s: float = 30.0

    def _wait(self, attempt: int, retry_after: float | None) -> float | None:
        if attempt + 1 >= self.attempts:
            return None
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after_s)
        backoff: float = min(self.max_backoff_s, self.backoff_s * 2.0**attempt)
        return backoff * (0.5 + random.random() / 2)  # jitter

    def after_exception(self, call: Call, exc: httpx.TransportError, attempt: int) -> float | None:
        """Seconds to wait before trying again, or None to give up."""
        not_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
        return self._wait(attempt, None) if not_sent or call.resendable else None

    def after_error(self, call: Call, err: RnnserveError, attempt: int) -> float | None:
        if err.status in (429, 503) or (err.status in (502, 504) and call.resendable):
            return self._wait(attempt, err.retry_after)
        return None


class Attempts:
    """One call's failed attempts so far: after each, the seconds to wait, or the error raised."""

    def __init__(self, retry: Retry, call: Call) -> None:
        self._retry = retry
        self._call = call
        self._failed = 0

    def after_exception(self, exc: httpx.TransportError, *, streamed: bool = False) -> float:
        """The connection failed. `streamed`: tokens were handed out already, and a resend
        would hand them out again, so the stream gives up (`StreamInterrupted`)."""
        wait = None if streamed else self._retry.after_exception(self._call, exc, self._failed)
        if wait is None:
            cls = StreamInterrupted if streamed else TransportError
            raise cls(f"{self._call.method} {self._call.path}: {exc!r}") from exc
        self._failed += 1
        return wait

    def after_response(self, response: httpx.Response) -> float:
        """The server answered non-2xx; its body must have been read."""
        err = error_of(response)
        wait = self._retry.after_error(self._call, err, self._failed)
        if wait is None:
            raise err
        self._failed += 1
        return wait


def retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to backoff


def error_of(response: httpx.Response) -> RnnserveError:
    """The typed error for a non-2xx response whose body has been read."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    return error_from_body(response.status_code, body, retry_after(response))
