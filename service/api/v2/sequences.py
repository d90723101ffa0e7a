"""Triton sequences on the shared session store: a v2 sequence IS a native session.

The sequence id is the session id (uint64 42 -> session "42"; a string id is used as is), so a
session created with `POST /v1/sessions` can be continued by a v2 request without
`sequence_start`, and the other way round. One request of a sequence runs under the store's
per-session lock (arrival order) and commits its new state with compare-and-set only when it
completes, like a native feed:

* `sequence_start`: begin from a fresh state (an existing sequence with that id is restarted);
* neither: continue; an unknown, expired or evicted id is a 400 naming the sequence and why;
* `sequence_end`: the state is freed after this request (nothing is stored for start+end).
"""

from __future__ import annotations

import numpy as np

from service.api.deps import Services
from service.api.v2.protocol import Sequence
from service.engine.registry import LoadedModel
from service.engine.session_records import (
    fresh_record,
    prefill_peeking,
    require_streamable,
    store_id,
)
from service.engine.sessions import SessionRecord
from service.engine.state_bounds import require_finite
from service.errors import (
    InvalidInput,
    ModelChanged,
    ServiceError,
    SessionEvicted,
    SessionExpired,
    SessionNotFound,
)

_REASONS: dict[type[ServiceError], str] = {
    SessionNotFound: "does not exist (never started, ended, or owned by another key)",
    SessionExpired: "expired after its idle TTL",
    SessionEvicted: "was evicted (live-session cap reached)",
}


class SequenceError(ServiceError):
    status, code = 400, "sequence_error"


async def _current(s: Services, seq: Sequence, owner: str | None) -> SessionRecord | None:
    """The live record, or None when missing and `sequence_start` allows that."""
    try:
        rec = await s.store.get(store_id(seq.session_id, owner))
    except (SessionNotFound, SessionExpired, SessionEvicted) as e:
        if seq.start:
            return None
        raise SequenceError(
            f"sequence {seq.label} {_REASONS[type(e)]}; send sequence_start=true to begin it",
            field="parameters.sequence_id",
        ) from None
    if rec.owner != owner:
        if seq.start:
            raise ServiceError(
                f"sequence {seq.label} is in use",
                status=409,
                code="session_exists",
                field="parameters.sequence_id",
            )
        raise SequenceError(
            f"sequence {seq.label} {_REASONS[SessionNotFound]}; send sequence_start=true to "
            "begin it",
            field="parameters.sequence_id",
        )
    return rec


def _check_model(seq: Sequence, rec: SessionRecord, m: LoadedModel) -> None:
    if rec.model != m.name:
        raise SequenceError(
            f"sequence {seq.label} belongs to model {rec.model!r}, not {m.name!r}",
            field="parameters.sequence_id",
        )
    if rec.model_sha256 != m.sha256:
        raise ModelChanged(
            f"model {m.name!r} changed since sequence {seq.label} started; restart it with "
            "sequence_start=true"
        )


async def step(
    s: Services,
    m: LoadedModel,
    seq: Sequence,
    text: str | None,
    ids: list[int] | None,
    owner: str | None,
) -> np.ndarray:
    """Feed one row (`text` or token `ids`) into the sequence; returns the logits (K,) on all
    input so far (peeking through an unfinished word, as a native feed does)."""
    engine = s.engine
    require_streamable(m)
    sid = store_id(seq.session_id, owner)  # the owner's namespace: ids never clash across keys
    async with s.store.lock(sid):
        rec = await _current(s, seq, owner)
        if rec is not None and not seq.start:
            _check_model(seq, rec, m)
        if seq.start or rec is None:
            base = fresh_record(m, sid, owner, s.sessions.clock(), s.settings.session_ttl_s)
        else:
            base = rec
        if text is not None:
            new_ids, pending = engine.encode_stream(m, base.pending, text, "TEXT")
        else:
            if base.pending:
                raise InvalidInput(
                    f"sequence {seq.label} holds unfinished text; continue it with TEXT",
                    field="TOKEN_IDS",
                )
            new_ids, pending = list(ids or []), ""
        shown, logits, states = await prefill_peeking(engine, m, base, new_ids, pending)
        require_finite(m, [shown, logits], states)
        if shown is None:
            raise InvalidInput(
                f"sequence {seq.label} has no tokens yet: the first request needs non-empty input",
                field="TEXT" if text is not None else "TOKEN_IDS",
            )
        new = base.replace(
            version=(rec.version + 1) if rec is not None else 1,
            states=tuple(states),
            pending=pending,
            logits=logits,
            tokens_seen=base.tokens_seen + len(new_ids),
        )
        if seq.end:
            if rec is not None:
                await s.store.delete(sid)
        elif rec is None:
            await s.store.create(new)
        else:
            await s.store.commit(new, rec.version)
        return shown
