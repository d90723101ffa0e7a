"""The native surface's JSON for the engine's typed results (`service/protocol/messages.py`): one
function per result, shared by the REST routes, the SSE `done` event and the WebSocket.

Keys come in the order of the OpenAPI models in `schemas.py`; a field the engine left unset
(`None`) is left out, as `response_model_exclude_none` did, except where the schema shows an
explicit null (a feed's `output` before any token).
"""

from __future__ import annotations

import base64
from typing import Any

from service.protocol.messages import (
    Classification,
    FeedResult,
    GenerationResult,
    Output,
    SessionInfo,
    StateExport,
    StepLogprob,
    TokenLogprob,
)


def output(o: Output | None) -> dict[str, Any] | None:
    if o is None:
        return None
    if isinstance(o, Classification):
        return {"label": o.label, "probs": o.probs}
    return {"next": [{"token": p.token, "prob": p.prob} for p in o.next]}


def step_logprob(lp: StepLogprob) -> dict[str, Any]:
    """A token event's `logprob`."""
    return {
        "logprob": lp.logprob,
        "top": [{"token": a.token, "logprob": a.logprob} for a in lp.top],
    }


def _token_logprob(lp: TokenLogprob) -> dict[str, Any]:
    return {
        "token": lp.token,
        "logprob": lp.logprob,
        "top": [{"token": a.token, "logprob": a.logprob} for a in lp.top],
    }


def generation(r: GenerationResult) -> dict[str, Any]:
    """`GenerateResponse`: a session's generation also says its version and whether it was an
    `Idempotency-Key` replay."""
    out: dict[str, Any] = {"model": r.model, "text": r.text, "finish_reason": r.finish_reason}
    if r.stop is not None:
        out["stop"] = r.stop
    u = r.usage
    out["usage"] = {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
    }
    out["seed"] = r.seed
    if r.logprobs is not None:
        out["logprobs"] = [_token_logprob(lp) for lp in r.logprobs]
    if r.session_id is not None:
        out["session_id"] = r.session_id
        if r.version is not None:
            out["version"] = r.version
        out["replayed"] = r.replayed
    return out


def session_info(r: SessionInfo, *, change: bool = False) -> dict[str, Any]:
    """`SessionInfo`; a change (reset) also says whether it was a replay."""
    out: dict[str, Any] = {
        "session_id": r.session_id,
        "model": r.model,
        "version": r.version,
        "created_at": r.created_at,
        "expires_at": r.expires_at,
        "ttl_s": float(r.ttl_s),  # a number of seconds, 3600.0 whichever surface made it
        "tokens_seen": r.tokens_seen,
        "pending_chars": r.pending_chars,
    }
    if change:
        out["replayed"] = r.replayed
    return out


def feed(r: FeedResult) -> dict[str, Any]:
    return {
        "session_id": r.session_id,
        "version": r.version,
        "tokens": r.tokens,
        "pending_chars": r.pending_chars,
        "output": output(r.output),
        "replayed": r.replayed,
    }


def state(r: StateExport) -> dict[str, Any]:
    return {
        "session_id": r.session_id,
        "model": r.model,
        "version": r.version,
        "state": base64.b64encode(r.state).decode(),
    }


def replay_headers(replayed: bool) -> dict[str, str]:
    return {"Idempotent-Replayed": "true"} if replayed else {}
