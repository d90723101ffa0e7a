"""v2 sequences (Triton's sequence batcher semantics), where one inference request is one step
of a session: the sequence id IS the session id, so either protocol continues what the other
started. `SessionService.sequence_step` is the entry; this module holds the rules that differ
from a native feed (start / end flags, the 400 for a gone sequence, token-id rows)."""

from __future__ import annotations

import numpy as np

from service.engine.engine import Engine
from service.engine.registry import LoadedModel
from service.errors import (
    InvalidInput,
    ModelChanged,
    SequenceError,
    ServiceError,
    SessionEvicted,
    SessionExpired,
    SessionNotFound,
)
from service.protocol.messages import SequenceRef
from service.sessions import Clock, SessionRecord, SessionStore
from service.sessions.bounds import require_finite
from service.sessions.feeding import (
    fresh_record,
    prefill_peeking,
    require_streamable,
    store_id,
)


class SequenceSteps:
    def __init__(
        self, engine: Engine, store: SessionStore, *, default_ttl_s: float, clock: Clock
    ) -> None:
        self.engine = engine
        self.store = store
        self.default_ttl_s = default_ttl_s
        self.clock = clock

    async def step(
        self,
        m: LoadedModel,
        seq: SequenceRef,
        text: str | None,
        ids: list[int] | None,
        owner: str | None,
    ) -> np.ndarray:
        """Feed one row (`text` or token `ids`) into a v2 sequence, which IS a session (the
        sequence id is the session id, so either protocol continues what the other started);
        returns the logits (K,) on all input so far, peeking through an unfinished word as a
        feed does. Under the session's lock, committed with compare-and-set on completion:

        * `start`: begin from a fresh state (an existing sequence with that id is restarted);
        * neither: continue; an unknown, expired or evicted id is a 400 naming the sequence;
        * `end`: the state is freed after this step (nothing is stored for start + end).
        """
        require_streamable(m)
        sid = store_id(seq.session_id, owner)  # the owner's namespace: ids never clash
        async with self.store.lock(sid):
            rec = await self._record(seq, sid, owner)
            if rec is not None and not seq.start:
                _check_sequence_model(seq, rec, m)
            if seq.start or rec is None:
                base = fresh_record(m, sid, owner, self.clock(), self.default_ttl_s)
            else:
                base = rec
            if text is not None:
                new_ids, pending = self.engine.encode_stream(m, base.pending, text, "TEXT")
            else:
                if base.pending:
                    raise InvalidInput(
                        f"sequence {seq.label} holds unfinished text; continue it with TEXT",
                        field="TOKEN_IDS",
                    )
                new_ids, pending = list(ids or []), ""
            shown, logits, states = await prefill_peeking(self.engine, m, base, new_ids, pending)
            require_finite(m, [shown, logits], states)
            if shown is None:
                raise InvalidInput(
                    f"sequence {seq.label} has no tokens yet: the first request needs non-empty "
                    "input",
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
                    await self.store.delete(sid)
            elif rec is None:
                await self.store.create(new)
            else:
                await self.store.commit(new, rec.version)
            return shown

    async def _record(self, seq: SequenceRef, sid: str, owner: str | None) -> SessionRecord | None:
        """The live record, or None when missing and `start` allows that."""
        try:
            rec = await self.store.get(sid)
        except (SessionNotFound, SessionExpired, SessionEvicted) as e:
            if seq.start:
                return None
            raise SequenceError(
                f"sequence {seq.label} {_GONE[type(e)]}; send sequence_start=true to begin it",
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
                f"sequence {seq.label} {_GONE[SessionNotFound]}; send sequence_start=true to "
                "begin it",
                field="parameters.sequence_id",
            )
        return rec


_GONE: dict[type[ServiceError], str] = {
    SessionNotFound: "does not exist (never started, ended, or owned by another key)",
    SessionExpired: "expired after its idle TTL",
    SessionEvicted: "was evicted (live-session cap reached)",
}


def _check_sequence_model(seq: SequenceRef, rec: SessionRecord, m: LoadedModel) -> None:
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
