"""What the session service (`session_ops.SessionService`) uses for native sessions and v2
sequences alike: the store key of a caller's id, a fresh record, the peeking prefill of a feed,
and the streamable check."""

from __future__ import annotations

import asyncio

import numpy as np

from service.engine.engine import Engine
from service.engine.registry import LoadedModel
from service.errors import UnsupportedTask
from service.sessions import SessionRecord


def store_id(session_id: str, owner: str | None) -> str:
    """The store key of a caller's session id: the id itself for the anonymous owner, else
    `owner/id` ("/" is in neither an owner name nor a session id, so this cannot be forged)."""
    return session_id if owner is None else f"{owner}/{session_id}"


def public_id(stored: str) -> str:
    """The id a caller knows, from a store key."""
    return stored.rpartition("/")[2]


def fresh_record(
    m: LoadedModel, sid: str, owner: str | None, now: float, ttl_s: float
) -> SessionRecord:
    """A new session (or v2 sequence) stored as `sid`: version 0, the model's initial state and
    no text seen yet."""
    return SessionRecord(
        id=sid,
        model=m.name,
        model_sha256=m.sha256,
        version=0,
        states=tuple(m.manifest.init_states(1)),
        pending="",
        logits=None,
        created_at=now,
        ttl_s=ttl_s,
        expires_at=now + ttl_s,
        owner=owner,
    )


async def prefill_peeking(
    engine: Engine, m: LoadedModel, rec: SessionRecord, ids: list[int], pending: str
) -> tuple[np.ndarray | None, np.ndarray | None, list[np.ndarray]]:
    """Feed `ids` after `rec`: (shown, logits, states), where `logits` and `states` are what to
    commit and `shown` (K,) peeks through the unfinished word `pending` without committing it,
    so it equals a one-shot prediction on all text so far (None before any token)."""
    peek = m.tokenizer.encode(pending) if pending else []
    states, logits = list(rec.states), rec.logits
    jobs = []  # both rows share one prefill batch
    if ids:
        jobs.append(engine.prefill(m, ids, states))
    if peek:
        jobs.append(engine.prefill(m, ids + peek, states))
    done = await asyncio.gather(*jobs)
    if ids:
        logits, states = done[0]
    shown = done[-1][0] if peek else logits
    return shown, logits, states


def require_streamable(m: LoadedModel) -> None:
    """A bidirectional encoder's output depends on text not seen yet: no sessions."""
    if not m.manifest.streamable:
        raise UnsupportedTask(
            f"model {m.name!r} is not streamable (a bidirectional encoder sees the whole text at "
            "once): sessions and sequences are refused; use predict with the full text",
            field="model",
            code="not_streamable",
        )
