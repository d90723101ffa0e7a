"""What every operation on a session shares, the base of the session service (`service.py`):
the caller's live record, the graph version its state belongs to, an `Idempotency-Key`'s replay,
the version check, advancing records by their tokens (`advance_many`: every prefill queued
before any is awaited) and the compare-and-set commit with its idempotency record."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from service.engine.engine import Engine
from service.engine.prefill import PrefillResult, StateRows
from service.engine.registry import LoadedModel
from service.errors import (
    IdempotencyKeyReused,
    ModelChanged,
    ServiceError,
    SessionEvicted,
    SessionExpired,
    SessionNotFound,
    VersionConflict,
)
from service.protocol.messages import Message, R, SessionInfo, replayed, stored
from service.sessions import Clock, IdempotencyRecord, SessionRecord, SessionStore
from service.sessions.store import LocalRecords, public_id, store_id

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext


class SessionRules:
    """The steps every session operation shares (`SessionService` is one)."""

    def __init__(
        self,
        engine: Engine,
        store: SessionStore,
        *,
        default_ttl_s: float,
        max_ttl_s: float,
        idempotency_ttl_s: float,
        clock: Clock = time.time,
    ) -> None:
        self.engine = engine
        self.store = store
        self.default_ttl_s = default_ttl_s
        self.max_ttl_s = max_ttl_s
        self.idempotency_ttl_s = idempotency_ttl_s
        self.clock = clock

    # -- helpers ----------------------------------------------------------------------------

    @staticmethod
    def info(rec: SessionRecord) -> SessionInfo:
        return SessionInfo(
            session_id=public_id(rec.id),
            model=rec.model,
            version=rec.version,
            created_at=rec.created_at,
            expires_at=rec.expires_at,
            ttl_s=float(rec.ttl_s),  # 3600.0 however it was given
            tokens_seen=rec.tokens_seen,
            pending_chars=len(rec.pending),
        )

    async def _get(self, session_id: str, owner: str | None) -> SessionRecord:
        """The caller's live session, or the store's `SessionNotFound` / `SessionExpired` /
        `SessionEvicted` naming the id the caller sent."""
        sid = store_id(session_id, owner)
        try:
            rec = await self.store.get(sid)
        except (SessionNotFound, SessionExpired, SessionEvicted) as e:
            _name_as_sent(e, sid, session_id)
            raise
        return _theirs(rec, session_id, owner)

    @staticmethod
    def _get_now(local: LocalRecords, session_id: str, owner: str | None) -> SessionRecord:
        """`_get` from a store's records in this process (no coroutine)."""
        sid = store_id(session_id, owner)
        try:
            rec = local.get_now(sid)
        except (SessionNotFound, SessionExpired, SessionEvicted) as e:
            _name_as_sent(e, sid, session_id)
            raise
        return _theirs(rec, session_id, owner)

    def _model(self, rec: SessionRecord) -> LoadedModel:
        """The version the session is pinned to: the one whose graph made its state, served
        until the session ends even when a newer version became the default."""
        return self.engine.registry.for_graph(
            rec.model,
            rec.model_sha256,
            "since this session started; export its state or reset it (a reset starts it "
            "again on the default version)",
        )

    def _model_or_default(self, rec: SessionRecord) -> LoadedModel:
        """Its pinned version while it serves new work, else the model's default one (a reset
        moves it: a fresh state need not stay on a version being unloaded)."""
        try:
            m = self._model(rec)
        except ModelChanged:
            return self.engine.model(rec.model)
        return self.engine.model(rec.model) if m.ident in self.engine.registry.draining else m

    async def advance(
        self, m: LoadedModel, rec: SessionRecord, ids: list[int], pending: str, version: int
    ) -> tuple[np.ndarray | None, SessionRecord]:
        """`rec` after the tokens `ids`, holding back the unfinished word `pending`, as the
        record to commit at `version`; and the logits (K,) to show, which peek through
        `pending` without committing it, so they equal a one-shot prediction on all text so
        far (None before any token). Both rows share one prefill batch."""
        (out,) = await self.advance_many([(m, rec, ids, pending, version)])
        if isinstance(out, Exception):
            raise out
        return out

    async def advance_many(
        self,
        work: Sequence[tuple[LoadedModel, SessionRecord, list[int], str, int]],
        traces: Sequence[SpanContext | None] | None = None,
    ) -> list[tuple[np.ndarray | None, SessionRecord] | Exception]:
        """`advance` for each (m, rec, ids, pending, version): every prefill queued before any
        is awaited (one wake-up of each model's engine thread for the lot), and each record's
        outcome its own (a refused or failed row fails its record alone). `traces`: each
        one's parent span (its prefills' spans go under it)."""
        # (by the loaded instance's id: `LoadedModel.ident` formats a string each time)
        queued: dict[int, tuple[LoadedModel, list[tuple[list[int], StateRows]]]] = {}
        parents: dict[int, list[SpanContext | None]] = {}  # (each job's, when traces are given)
        plans: list[tuple[int, int, int] | Exception] = []
        for k, (m, rec, ids, pending, _) in enumerate(work):
            try:
                peek = m.tokenizer.encode(pending) if pending else []
            except Exception as e:
                plans.append(e)
                continue
            jobs = queued.setdefault(id(m), (m, []))[1]
            plans.append((id(m), len(jobs), bool(ids) + bool(peek)))
            states = list(rec.states)
            if ids:
                jobs.append((ids, states))
            if peek:
                jobs.append((ids + peek, states))
            if traces is not None:
                parents.setdefault(id(m), []).extend([traces[k]] * (bool(ids) + bool(peek)))
        futures: dict[int, list[asyncio.Future[PrefillResult]] | Exception] = {}
        for ident, (m, jobs) in queued.items():
            try:
                futures[ident] = (
                    self.engine.submit(m, jobs, parents.get(ident) if traces else None)
                    if jobs
                    else []
                )
            except Exception as e:  # (the model went away since the record was read)
                futures[ident] = e
        out: list[tuple[np.ndarray | None, SessionRecord] | Exception] = []
        for (_, rec, ids, pending, version), plan in zip(work, plans, strict=True):
            if isinstance(plan, Exception):
                out.append(plan)
                continue
            ident, first, n = plan
            mine = futures[ident]
            if isinstance(mine, Exception):
                out.append(mine)
                continue
            done: list[PrefillResult] = []
            error: Exception | None = None
            for fut in mine[first : first + n]:  # (each awaited: no error goes unretrieved)
                try:
                    done.append(await fut)
                except Exception as e:
                    error = error or e
            if error is not None:
                out.append(error)
                continue
            # (every prefill's outputs are checked as the engine makes them: engine/finite.py)
            logits, states = done[0] if ids else (rec.logits, list(rec.states))
            shown = done[-1][0] if len(done) > bool(ids) else logits
            new = rec.replace(
                version=version,
                states=tuple(states),
                pending=pending,
                logits=logits,
                tokens_seen=rec.tokens_seen + len(ids),
            )
            out.append((shown, new))
        return out

    @staticmethod
    def _fingerprint(op: str, body: dict[str, Any]) -> str:
        raw = json.dumps({"op": op, "body": body}, sort_keys=True, default=str)
        return hashlib.sha256(raw.encode()).hexdigest()

    async def _replay(
        self, rec: SessionRecord, key: str | None, fingerprint: str, kind: type[R]
    ) -> R | None:
        if key is None:
            return None
        return self._replayed(await self.store.get_idempotent(rec.id, key), fingerprint, kind)

    @staticmethod
    def _replayed(stored: IdempotencyRecord | None, fingerprint: str, kind: type[R]) -> R | None:
        """The answer an `Idempotency-Key`'s stored record replays (None: not used yet), or
        `IdempotencyKeyReused` if it was made for another request."""
        if stored is None:
            return None
        if stored.fingerprint != fingerprint:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was used for a different request", field="Idempotency-Key"
            )
        return replayed(kind, stored.result)

    @staticmethod
    def _check_version(rec: SessionRecord, expected: int | None) -> None:
        if expected is not None and expected != rec.version:
            raise VersionConflict(
                f"session {rec.id!r} is at version {rec.version}, not {expected}",
                field="expected_version",
            )

    async def _commit(
        self,
        old: SessionRecord,
        new: SessionRecord,
        key: str | None,
        fp: str,
        result: Message,
    ) -> SessionRecord:
        return await self.store.commit(new, old.version, self._idempotency(key, fp, result))

    def _idempotency(
        self, key: str | None, fp: str, result: Message
    ) -> tuple[str, IdempotencyRecord] | None:
        """The record a commit stores for its request's `Idempotency-Key` (None: no key)."""
        if key is None:
            return None
        return key, IdempotencyRecord(fp, stored(result), self.clock() + self.idempotency_ttl_s)

    # -- lifecycle --------------------------------------------------------------------------


def _name_as_sent(e: ServiceError, sid: str, session_id: str) -> None:
    """A store's not-found error for `sid`, made to name the id the caller sent."""
    if sid != session_id:
        e.message = e.message.replace(repr(sid), repr(session_id))
        e.args = (e.message,)


def _theirs(rec: SessionRecord, session_id: str, owner: str | None) -> SessionRecord:
    """`rec` if `owner` owns it: another key's session looks exactly like a missing one."""
    if rec.owner != owner:
        raise SessionNotFound(f"session {session_id!r} does not exist")
    return rec
