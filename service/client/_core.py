"""What the sync and async clients share: request descriptions, the retry policy, SSE parsing.

No I/O happens here; `sync.py` and `aio.py` only add the loop that sends and sleeps.
"""

from __future__ import annotations

import json
import random
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypedDict

import httpx

from service.client.errors import RnnserveError, error_from_body
from service.client.types import Generation

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=5.0)


class SamplingArgs(TypedDict, total=False):
    """Generation parameters; unset ones take the model's defaults."""

    max_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int
    stop: str | list[str]
    logprobs: int


@dataclass(frozen=True)
class Call:
    """One API request. `resendable`: sending it twice cannot apply it twice (a read, a
    stateless computation, or a state change carrying an Idempotency-Key / client-chosen id)."""

    method: str
    path: str
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    resendable: bool = True


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


def new_key() -> str:
    return uuid.uuid4().hex


def new_session_id() -> str:
    """192 random bits, like the server's own ids; lets a lost create be retried safely."""
    return secrets.token_urlsafe(24)


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


# -- the calls ---------------------------------------------------------------------------------


def predict_call(model: str, texts: list[str], top_k: int | None) -> Call:
    return Call(
        "POST", f"/v1/models/{model}/predict", _drop_none({"inputs": texts, "top_k": top_k})
    )


def generate_call(model: str, prompt: str | None, stream: bool, params: SamplingArgs) -> Call:
    body = _drop_none({"prompt": prompt, **params}) | {"stream": stream}
    return Call("POST", f"/v1/models/{model}/generate", body)


def create_call(model: str | None, session_id: str, ttl_s: float | None, state: str | None) -> Call:
    body = _drop_none({"model": model, "session_id": session_id, "ttl_s": ttl_s, "state": state})
    return Call("POST", "/v1/sessions", body)


def session_call(sid: str, op: str, body: dict[str, Any] | None, key: str | None) -> Call:
    """A state-changing session operation: always with an Idempotency-Key."""
    return Call(
        "POST",
        f"/v1/sessions/{sid}/{op}",
        _drop_none(body or {}),
        {"Idempotency-Key": key or new_key()},
    )


# -- server-sent events ----------------------------------------------------------------------


class SSEParser:
    """Incremental `text/event-stream` parser: feed lines, get `(event, data)` per message."""

    def __init__(self) -> None:
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, line: str) -> Iterator[tuple[str | None, str]]:
        if line == "":
            if self._data:
                yield self._event, "\n".join(self._data)
            self._event, self._data = None, []
        elif line.startswith(":"):
            return  # comment / keep-alive
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                self._event = value
            elif name == "data":
                self._data.append(value)


@dataclass
class StreamState:
    """Turns the service's generation events into tokens and a final `Generation`."""

    result: Generation | None = None
    yielded: int = 0
    finished: bool = False  # the terminal `[DONE]` arrived

    def on_event(self, event: str | None, data: str) -> str | None:
        """The token text to hand out, or None; raises the typed error of an `error` event."""
        if data == "[DONE]":
            self.finished = True
            return None
        payload = json.loads(data)
        if event == "token":
            text: str = payload["text"]
            self.yielded += 1
            return text
        if event == "done":
            self.result = Generation.parse(payload)
            if self.result.replayed and self.yielded == 0:
                # an idempotent replay carries no token events: hand out the stored text whole
                return self.result.text or None
            return None
        if event == "error":
            raise error_from_body(None, payload)
        return None
