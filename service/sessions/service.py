"""Session operations with DESIGN §4 semantics: the one owner of every session rule, for native
sessions, WebSocket, OpenAI session completions and v2 sequences alike (the v2 step's own rules
live in `sequence_ops.py`, state export/import in `session_state.py`).

Every operation on a session runs under the store's per-session lock (arrival order), checks an
`Idempotency-Key` first (a replay returns the stored result and changes nothing), then
`expected_version`, computes the new state from a snapshot and commits it with compare-and-set
only when the request completes. Cancellation or an error before the commit leaves the session
exactly as it was.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from contextlib import AsyncExitStack
from typing import Any

import msgspec
import numpy as np

from service.engine.engine import Engine, Generation
from service.engine.registry import LoadedModel
from service.engine.sampling import SamplingParams
from service.engine.stream import DoneEvent, Stream
from service.errors import (
    IdempotencyKeyReused,
    InvalidInput,
    ModelChanged,
    SessionEvicted,
    SessionExists,
    SessionExpired,
    SessionNotFound,
    VersionConflict,
)
from service.protocol.messages import (
    FeedResult,
    GenerateParams,
    GenerationResult,
    Message,
    R,
    SequenceRef,
    SessionInfo,
    StateExport,
    replayed,
    stored,
)
from service.sessions import (
    Clock,
    IdempotencyRecord,
    SessionRecord,
    SessionStore,
    decode_state,
)
from service.sessions.bounds import require_finite
from service.sessions.feeding import (
    fresh_record,
    prefill_peeking,
    public_id,
    require_streamable,
    store_id,
)
from service.sessions.import_export import export_blob, restore
from service.sessions.sequences import SequenceSteps


class SessionService:
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
        self._sequences = SequenceSteps(engine, store, default_ttl_s=default_ttl_s, clock=clock)

    # -- helpers ----------------------------------------------------------------------------

    @staticmethod
    def info(rec: SessionRecord) -> SessionInfo:
        return SessionInfo(
            session_id=public_id(rec.id),
            model=rec.model,
            version=rec.version,
            created_at=rec.created_at,
            expires_at=rec.expires_at,
            ttl_s=rec.ttl_s,
            tokens_seen=rec.tokens_seen,
            pending_chars=len(rec.pending),
        )

    async def _get(self, session_id: str, owner: str | None) -> SessionRecord:
        sid = store_id(session_id, owner)
        try:
            rec = await self.store.get(sid)
        except (SessionNotFound, SessionExpired, SessionEvicted) as e:
            if sid != session_id:  # the message names the id the caller sent
                e.message = e.message.replace(repr(sid), repr(session_id))
                e.args = (e.message,)
            raise
        if rec.owner != owner:  # another key's session looks exactly like a missing one
            raise SessionNotFound(f"session {session_id!r} does not exist")
        return rec

    def _model(self, rec: SessionRecord) -> LoadedModel:
        m = self.engine.model(rec.model)
        if m.sha256 != rec.model_sha256:
            raise ModelChanged(
                f"model {rec.model!r} changed since this session started; export its state or "
                "reset it"
            )
        return m

    @staticmethod
    def _fingerprint(op: str, body: dict[str, Any]) -> str:
        raw = json.dumps({"op": op, "body": body}, sort_keys=True, default=str)
        return hashlib.sha256(raw.encode()).hexdigest()

    async def _replay(
        self, rec: SessionRecord, key: str | None, fingerprint: str, kind: type[R]
    ) -> R | None:
        if key is None:
            return None
        stored = await self.store.get_idempotent(rec.id, key)
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
        idem = None
        if key is not None:
            expires = self.clock() + self.idempotency_ttl_s
            idem = (key, IdempotencyRecord(fp, stored(result), expires))
        return await self.store.commit(new, old.version, idem)

    # -- lifecycle --------------------------------------------------------------------------

    async def create(
        self,
        model: str | None,
        session_id: str | None,
        ttl_s: float | None,
        state: bytes | None,
        owner: str | None,
    ) -> SessionInfo:
        blob = decode_state(state) if state is not None else None
        name = model if model is not None else (blob.model if blob is not None else None)
        if name is None:
            raise InvalidInput("`model` is required (or a `state` blob naming one)", field="model")
        m = self.engine.model(name)
        require_streamable(m)
        ttl = self.default_ttl_s if ttl_s is None else ttl_s
        if ttl > self.max_ttl_s:
            raise InvalidInput(f"ttl_s must be <= {self.max_ttl_s}", field="ttl_s")
        # 192 random bits; stored under the owner's namespace (ids never clash across keys)
        sid = store_id(session_id or secrets.token_urlsafe(24), owner)
        rec = fresh_record(m, sid, owner, self.clock(), ttl)
        if blob is not None:
            rec = restore(m, rec, blob)
        try:
            await self.store.create(rec)
        except SessionExists:
            raise SessionExists(
                f"session {public_id(rec.id)!r} already exists", field="session_id"
            ) from None
        return self.info(rec)

    async def get(self, session_id: str, owner: str | None) -> SessionInfo:
        return self.info(await self._get(session_id, owner))

    async def delete(self, session_id: str, owner: str | None) -> None:
        async with self.store.lock(store_id(session_id, owner)):
            rec = await self._get(session_id, owner)
            await self.store.delete(rec.id)

    async def export_state(self, session_id: str, owner: str | None) -> StateExport:
        rec = await self._get(session_id, owner)
        data = export_blob(self.engine.model(rec.model), rec)
        return StateExport(public_id(rec.id), rec.model, rec.version, data)

    # -- state-changing operations ----------------------------------------------------------

    async def reset(
        self, session_id: str, expected_version: int | None, key: str | None, owner: str | None
    ) -> SessionInfo:
        async with self.store.lock(store_id(session_id, owner)):
            rec = await self._get(session_id, owner)
            fp = self._fingerprint("reset", {})
            replay = await self._replay(rec, key, fp, SessionInfo)
            if replay is not None:
                return replay
            self._check_version(rec, expected_version)
            m = self.engine.model(rec.model)
            new = rec.replace(
                version=rec.version + 1,
                states=tuple(m.manifest.init_states(1)),
                pending="",
                logits=None,
                tokens_seen=0,
                model_sha256=m.sha256,
            )
            return self.info(await self._commit(rec, new, key, fp, self.info(new)))

    async def feed(
        self,
        session_id: str,
        text: str,
        top_k: int,
        expected_version: int | None,
        key: str | None,
        owner: str | None,
    ) -> FeedResult:
        async with self.store.lock(store_id(session_id, owner)):
            rec = await self._get(session_id, owner)
            fp = self._fingerprint("feed", {"text": text, "top_k": top_k})
            replay = await self._replay(rec, key, fp, FeedResult)
            if replay is not None:
                return replay
            self._check_version(rec, expected_version)
            m = self._model(rec)
            ids, pending = self.engine.encode_stream(m, rec.pending, text, "text")
            shown, logits, states = await prefill_peeking(self.engine, m, rec, ids, pending)
            require_finite(m, [shown, logits], states)
            new = rec.replace(
                version=rec.version + 1,
                states=tuple(states),
                pending=pending,
                logits=logits,
                tokens_seen=rec.tokens_seen + len(ids),
            )
            result = FeedResult(
                session_id=public_id(rec.id),
                version=new.version,
                tokens=len(ids),
                pending_chars=len(pending),
                output=self.engine.output(m, shown, top_k),
            )
            await self._commit(rec, new, key, fp, result)
            return result

    async def open_generation(
        self,
        session_id: str,
        p: GenerateParams,
        expected_version: int | None,
        key: str | None,
        owner: str | None,
    ) -> Generation:
        """Take the session's lock and start generating; the lock is held until the
        generation is closed, and the state is committed only when it finishes."""
        stack = AsyncExitStack()
        await stack.enter_async_context(self.store.lock(store_id(session_id, owner)))
        try:
            rec = await self._get(session_id, owner)
            fp = self._fingerprint("generate", msgspec.structs.asdict(p))
            replay = await self._replay(rec, key, fp, GenerationResult)
            m = self._model(rec)
            m.view.require_lm()
            if replay is None:
                self._check_version(rec, expected_version)
            ids, pending = (
                self.engine.encode_stream(m, rec.pending, p.prompt, "prompt")
                if p.prompt
                else ([], rec.pending)
            )
            params = self.engine.sampling(m, p)
            public = public_id(rec.id)
            if replay is not None:
                stream = _idle_stream(params)
                return Generation(stream, m.name, public, release=stack.aclose, replay=replay)
            stream = await self.engine.start_generation(
                m, params, ids, list(rec.states), rec.logits
            )
        except BaseException:
            await stack.aclose()
            raise

        async def finalize(done: DoneEvent, result: GenerationResult) -> GenerationResult:
            require_finite(m, [done.logits], done.states)
            fed = result.usage.total_tokens
            new = rec.replace(
                version=rec.version + 1,
                states=tuple(done.states),
                pending=pending,
                logits=done.logits,
                tokens_seen=rec.tokens_seen + fed,
            )
            result = msgspec.structs.replace(result, version=new.version)
            await self._commit(rec, new, key, fp, result)
            return result

        return Generation(stream, m.name, public, finalize=finalize, release=stack.aclose)

    # -- v2 sequences: one request is one step of a session (sequence_ops.py) -------------------

    async def sequence_step(
        self,
        m: LoadedModel,
        seq: SequenceRef,
        text: str | None,
        ids: list[int] | None,
        owner: str | None,
    ) -> np.ndarray:
        """Feed one row (`text` or token `ids`) into v2 sequence `seq`; the logits (K,) on all
        input so far (`SequenceSteps.step` has the rules)."""
        return await self._sequences.step(m, seq, text, ids, owner)


def _idle_stream(params: SamplingParams) -> Stream:
    """A stream that never joins a batch (for a replayed result)."""
    return Stream(params, np.zeros(1, np.float32), [], lambda i: "")
