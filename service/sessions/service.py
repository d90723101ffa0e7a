"""Session operations with DESIGN §4 semantics: the one owner of every session rule, for native
sessions, WebSocket, OpenAI session completions and v2 sequences alike (a v2 sequence is a
session: its step runs the same lookup, model check and advance here, and `sequences.py` only
words its errors as Triton's sequence batcher would; state export/import is `import_export.py`).
The steps every operation shares are `rules.py`'s (`SessionRules`), the feeds `feeds.py`'s
(`SessionFeeds`: one at a time, or a batch read together); `SessionService` is all of them.

Every operation on a session runs under the store's per-session lock (arrival order), checks an
`Idempotency-Key` first (a replay returns the stored result and changes nothing), then
`expected_version`, computes the new state from a snapshot and commits it with compare-and-set
only when the request completes. Cancellation or an error before the commit leaves the session
exactly as it was.
"""

from __future__ import annotations

import contextlib
import secrets
from contextlib import AsyncExitStack

import msgspec
import numpy as np

from service.engine.dispatch import handles
from service.engine.generation import BeforeCommit, Generation
from service.engine.registry import LoadedModel, split_ref
from service.engine.sampling import SamplingParams
from service.engine.stream import DoneEvent, Route, Stream
from service.errors import (
    InvalidInput,
    ModelChanged,
    ModelNotFound,
    SessionEvicted,
    SessionExists,
    SessionExpired,
    SessionNotFound,
    UnsupportedTask,
)
from service.protocol.messages import GenerationResult, SequenceOutput, SessionInfo, StateExport
from service.protocol.ops import (
    CreateSession,
    DeleteSession,
    ExportState,
    GetSession,
    LiveSessions,
    Reset,
    SequenceStep,
    SessionGenerate,
)
from service.sessions import SessionRecord, decode_state, sequences
from service.sessions.bounds import require_finite
from service.sessions.feeds import SessionFeeds
from service.sessions.import_export import export_blob, restore
from service.sessions.record import fresh_record
from service.sessions.store import public_id, store_id


class SessionService(SessionFeeds):
    """Every operation on a session (the feeds' are `SessionFeeds`', the shared steps
    `SessionRules`')."""

    @handles(CreateSession)
    async def create(self, op: CreateSession) -> SessionInfo:
        owner, ttl_s = op.owner, op.ttl_s
        blob = decode_state(op.state) if op.state is not None else None
        name = op.model if op.model is not None else (blob.model if blob is not None else None)
        if name is None:
            raise InvalidInput("`model` is required (or a `state` blob naming one)", field="model")
        m = self.engine.model(name)
        if blob is not None and "@" not in name and blob.model == m.name:
            # an exported state goes back onto the very graph that made it, where it serves
            with contextlib.suppress(ModelChanged, ModelNotFound):
                m = self.engine.registry.for_graph(m.name, blob.model_sha256, "")
        require_streamable(m)
        ttl = self.default_ttl_s if ttl_s is None else ttl_s
        if ttl > self.max_ttl_s:
            raise InvalidInput(f"ttl_s must be <= {self.max_ttl_s}", field="ttl_s")
        # 192 random bits; stored under the owner's namespace (ids never clash across keys)
        sid = store_id(op.session_id or secrets.token_urlsafe(24), owner)
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

    @handles(GetSession)
    async def get(self, op: GetSession) -> SessionInfo:
        return self.info(await self._get(op.session_id, op.owner))

    @handles(DeleteSession)
    async def delete(self, op: DeleteSession) -> None:
        async with self.store.lock(store_id(op.session_id, op.owner)):
            rec = await self._get(op.session_id, op.owner)
            await self.store.delete(rec.id)

    @handles(LiveSessions)
    async def count(self, _op: LiveSessions) -> int:
        return await self.store.count()

    @handles(ExportState)
    async def export_state(self, op: ExportState) -> StateExport:
        rec = await self._get(op.session_id, op.owner)
        try:  # (the state's own graph names its arrays, draining or not)
            m = self._model(rec)
        except ModelChanged:
            m = self.engine.model(rec.model)
        data = export_blob(m, rec)
        return StateExport(public_id(rec.id), rec.model, rec.version, data)

    # -- state-changing operations ----------------------------------------------------------

    @handles(Reset)
    async def reset(self, op: Reset) -> SessionInfo:
        key, expected_version = op.key, op.expected_version
        async with self.store.lock(store_id(op.session_id, op.owner), key):
            rec = await self._get(op.session_id, op.owner)
            fp = self._fingerprint("reset", {})
            replay = await self._replay(rec, key, fp, SessionInfo)
            if replay is not None:
                return replay
            self._check_version(rec, expected_version)
            m = self._model_or_default(rec)
            new = rec.replace(
                version=rec.version + 1,
                states=tuple(m.manifest.init_states(1)),
                pending="",
                logits=None,
                tokens_seen=0,
                model_sha256=m.sha256,
            )
            done = self.info(await self._commit(rec, new, key, fp, self.info(new)))
            return msgspec.structs.replace(done, replayed=False)

    @handles(SessionGenerate)
    async def open_generation(
        self,
        op: SessionGenerate,
        before_commit: BeforeCommit | None = None,
        route: Route | None = None,
    ) -> Generation:
        """Take the session's lock and start generating; the lock is held until the
        generation is closed, and the state is committed only when it finishes (after
        `before_commit`: the engine process waits there for its worker's client)."""
        p, key, expected_version = op.params, op.key, op.expected_version
        stack = AsyncExitStack()
        await stack.enter_async_context(self.store.lock(store_id(op.session_id, op.owner), key))
        try:
            rec = await self._get(op.session_id, op.owner)
            fp = self._fingerprint("generate", msgspec.structs.asdict(p))
            replay = await self._replay(rec, key, fp, GenerationResult)
            m = self._model(rec)
            m.view.require_lm()
            if replay is None:
                self._check_version(rec, expected_version)
            ids, pending = (
                m.view.encode_stream(rec.pending, p.prompt, "prompt")
                if p.prompt
                else ([], rec.pending)
            )
            params = self.engine.sampling(m, p)
            public = public_id(rec.id)
            if replay is not None:
                stream = _idle_stream(params)
                return Generation(
                    stream, m.name, public, release=stack.aclose, replay=replay, key=m.key
                )
            stream = await self.engine.start_generation(
                m, params, ids, list(rec.states), rec.logits, route
            )
        except BaseException:
            await stack.aclose()
            raise

        async def finalize(done: DoneEvent, result: GenerationResult) -> GenerationResult:
            assert done.logits is not None and done.states is not None  # (keep_final: default)
            require_finite(m, [done.logits], done.states)
            fed = result.usage.total_tokens
            new = rec.replace(
                version=rec.version + 1,
                states=tuple(done.states),
                pending=pending,
                logits=done.logits,
                tokens_seen=rec.tokens_seen + fed,
            )
            result = msgspec.structs.replace(result, version=new.version, replayed=False)
            await self._commit(rec, new, key, fp, result)
            return result

        return Generation(
            stream,
            m.name,
            public,
            finalize=finalize,
            release=stack.aclose,
            before_commit=before_commit,
            key=m.key,
        )

    # -- v2 sequences: one request is one step of a session -------------------------------

    @handles(SequenceStep)
    async def sequence_step(self, op: SequenceStep) -> SequenceOutput:
        """Feed one row (`text` or token `ids`) into a v2 sequence, which IS a session (the
        sequence id is the session id, so either protocol continues what the other started);
        the logits (K,) on all input so far, peeking through an unfinished word as a feed
        does. Under the session's lock, committed with compare-and-set on completion:

        * `start`: begin from a fresh state (an existing sequence with that id is restarted);
        * neither: continue; an unknown, expired or evicted id is a 400 naming the sequence;
        * `end`: the state is freed after this step (nothing is stored for start + end).
        """
        seq, owner = op.seq, op.owner
        name, version_named = split_ref(op.model)
        since = f"since sequence {seq.label} started; restart it with sequence_start=true"
        if not self.engine.registry.knows(name):  # (before any lock or store call)
            self.engine.model(name)  # 404 naming it
        async with self.store.lock(store_id(seq.session_id, owner)):
            try:
                rec: SessionRecord | None = await self._get(seq.session_id, owner)
            except (SessionNotFound, SessionExpired, SessionEvicted) as e:
                if not seq.start:
                    raise sequences.gone(seq, e) from None
                rec = None
            if rec is not None and not seq.start:
                sequences.require_model(seq, rec.model, name)
                # the version its state belongs to, draining or not (a request naming another
                # version is told so: a state is never fed to another graph)
                m, base = self.engine.registry.for_graph(rec.model, rec.model_sha256, since), rec
                if version_named is not None and version_named != m.version:
                    raise ModelChanged(
                        f"model {name!r} version {version_named} is not the "
                        f"version {m.version} this sequence runs on ({since})"
                    )
            else:
                m = self.engine.model(op.model)
                require_streamable(m)
                sid = store_id(seq.session_id, owner)
                base = fresh_record(m, sid, owner, self.clock(), self.default_ttl_s)
            ids, pending = sequences.row(m, seq, base.pending, op.text, op.ids)
            version = rec.version + 1 if rec is not None else 1
            shown, new = await self.advance(m, base, ids, pending, version)
            if shown is None:
                raise sequences.empty(seq, op.text is not None)
            if seq.end:
                if rec is not None:
                    await self.store.delete(rec.id)
            elif rec is None:
                await self.store.create(new)
            else:
                await self.store.commit(new, rec.version)
            return SequenceOutput(shown, m.key)


def require_streamable(m: LoadedModel) -> None:
    """A bidirectional encoder's output depends on text not seen yet: no sessions."""
    if not m.manifest.streamable:
        raise UnsupportedTask(
            f"model {m.name!r} is not streamable (a bidirectional encoder sees the whole text at "
            "once): sessions and sequences are refused; use predict with the full text",
            field="model",
            code="not_streamable",
        )


def _idle_stream(params: SamplingParams) -> Stream:
    """A stream that never joins a batch (for a replayed result)."""
    return Stream(params, np.zeros(1, np.float32), [], lambda i: "")
