"""What a request is (`Call`) and how the ones with a body are built. No I/O happens here."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any, TypedDict

import httpx

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
