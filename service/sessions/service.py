"""Session operations with DESIGN §4 semantics: the one owner of every session rule, for native
sessions, WebSocket, OpenAI session completions and v2 sequences alike (a v2 sequence is a
session: its step runs the same lookup, model check and advance here, and `sequences.py` only
words its errors as Triton's sequence batcher would; state export/import is `import_export.py`).

Every operation on a session runs under the store's per-session lock (arrival order), checks an
`Idempotency-Key` first (a replay returns the stored result and changes nothing), then
`expected_version`, computes the new state from a snapshot and commits it with compare-and-set
only when the request completes. Cancellation or an error before the commit leaves the session
exactly as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import time
from collections.abc import Callable, Container, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from service.engine.dispatch import Reply, handles, handles_batch
from service.engine.engine import BeforeCommit, Engine, Generation
from service.engine.prefill import PrefillResult, StateRows
from service.engine.registry import LoadedModel, split_ref
from service.engine.sampling import SamplingParams
from service.engine.stream import DoneEvent, Route, Stream
from service.errors import (
    IdempotencyKeyReused,
    InvalidInput,
    ModelChanged,
    ModelNotFound,
    SessionEvicted,
    SessionExists,
    SessionExpired,
    SessionNotFound,
    UnsupportedTask,
    VersionConflict,
)
from service.protocol.messages import (
    FeedResult,
    GenerationResult,
    Message,
    Output,
    R,
    SequenceOutput,
    SessionInfo,
    StateExport,
    replayed,
    stored,
)
from service.protocol.ops import (
    CreateSession,
    DeleteSession,
    ExportState,
    Feed,
    GetSession,
    LiveSessions,
    Reset,
    SequenceStep,
    SessionGenerate,
)
from service.sessions import (
    Clock,
    IdempotencyRecord,
    SessionRecord,
    SessionStore,
    decode_state,
    sequences,
)
from service.sessions.bounds import require_finite
from service.sessions.import_export import export_blob, restore
from service.sessions.record import fresh_record
from service.sessions.store import public_id, store_id


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
            if sid != session_id:  # the message names the id the caller sent
                e.message = e.message.replace(repr(sid), repr(session_id))
                e.args = (e.message,)
            raise
        if rec.owner != owner:  # another key's session looks exactly like a missing one
            raise SessionNotFound(f"session {session_id!r} does not exist")
        return rec

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
        self, work: Sequence[tuple[LoadedModel, SessionRecord, list[int], str, int]]
    ) -> list[tuple[np.ndarray | None, SessionRecord] | Exception]:
        """`advance` for each (m, rec, ids, pending, version): every prefill queued before any
        is awaited (one wake-up of each model's engine thread for the lot), and each record's
        outcome its own (a refused or failed row fails its record alone)."""
        # (by the loaded instance's id: `LoadedModel.ident` formats a string each time)
        queued: dict[int, tuple[LoadedModel, list[tuple[list[int], StateRows]]]] = {}
        plans: list[tuple[int, int, int] | Exception] = []
        for m, rec, ids, pending, _ in work:
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
        futures: dict[int, list[asyncio.Future[PrefillResult]] | Exception] = {}
        for ident, (m, jobs) in queued.items():
            try:
                futures[ident] = self.engine.submit(m, jobs) if jobs else []
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
        async with self.store.lock(store_id(op.session_id, op.owner)):
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

    @handles(Feed)
    async def feed(self, op: Feed) -> FeedResult:
        async with self.store.lock(store_id(op.session_id, op.owner)):
            result = await self._feed_locked(op)
        assert result is not None  # (its caller cannot be gone: it is awaiting this)
        return result

    @property
    def batching(self) -> bool:
        """Whether feeds may run in batches (`feed_batch`): where the store takes its locks
        without I/O, so a batch takes its sessions, or their places in line, as it is read."""
        return self.store.local_locks

    @handles_batch(Feed)
    async def feed_batch(self, ops: Sequence[Feed], reply: Reply, gone: Container[int]) -> None:
        """Feeds read together (one worker's, from the wire) run as one. In its first step,
        before anything read after it runs, the batch takes each feed's session, or its place
        in that session's line when it is busy (arrival order, as `feed`'s lock); a feed that
        waits runs on its own when its turn comes. The others run together: `feed`'s checks,
        every prefill queued with one wake-up of the engine thread (`advance_many`), and each
        committed and replied on its own (one that fails, or whose caller is `gone` before its
        commit, leaves its session as it was)."""
        held: list[str] = []
        queued: list[tuple[int, str, asyncio.Future[None], asyncio.Task[None]]] = []
        started: set[int] = set()  # the queued feeds whose task ran (and owns its turn)
        steps: list[tuple[int, _FeedStep]] = []
        try:
            try:
                for i, op in enumerate(ops):
                    sid = store_id(op.session_id, op.owner)
                    turn = self.store.lock_now(sid)
                    if turn is not None:  # busy: in line now, run when its turn comes
                        run = self._feed_in_turn(i, op, sid, turn, started, reply, gone)
                        queued.append((i, sid, turn, asyncio.create_task(run)))
                        continue
                    held.append(sid)
                    try:
                        begun = await self._feed_begin(op)
                    except Exception as e:
                        reply(i, e)
                        continue
                    if isinstance(begun, FeedResult):
                        reply(i, begun)
                    else:
                        steps.append((i, begun))
                advanced = await self.advance_many([s.work for _, s in steps])
                shown = self._outputs([s for _, s in steps], advanced)
                for (i, step), adv, output in zip(steps, advanced, shown, strict=True):
                    if isinstance(adv, Exception):
                        reply(i, adv)
                    elif i not in gone:
                        try:
                            reply(i, await self._feed_end(step, adv[1], output))
                        except Exception as e:
                            reply(i, e)
            finally:
                for sid in held:
                    self.store.unlock(sid)
            if queued:
                await asyncio.gather(*(t for *_, t in queued))
        except BaseException:
            for *_, t in queued:
                t.cancel()
            raise
        finally:
            for i, sid, turn, _ in queued:
                if i not in started:  # its task never ran: its place in line is given up
                    self.store.abandon(sid, turn)

    async def _feed_in_turn(
        self,
        i: int,
        op: Feed,
        sid: str,
        turn: asyncio.Future[None],
        started: set[int],
        reply: Reply,
        gone: Container[int],
    ) -> None:
        """A feed of a batch that waited in its session's line: `feed` once its turn comes."""
        started.add(i)  # (from here on, this task gives its turn up if it must)
        try:
            try:
                await turn
            except BaseException:
                self.store.abandon(sid, turn)
                raise
            try:
                result = await self._feed_locked(op, lambda: i in gone)
            finally:
                self.store.unlock(sid)
        except Exception as e:
            reply(i, e)
            return
        if result is not None:
            reply(i, result)

    async def _feed_locked(
        self, op: Feed, gone: Callable[[], bool] = lambda: False
    ) -> FeedResult | None:
        """A feed under its session's lock; None when its caller went before the commit."""
        begun = await self._feed_begin(op)
        if isinstance(begun, FeedResult):
            return begun
        shown, new = await self.advance(*begun.work)
        if gone():
            return None
        return await self._feed_end(begun, new, self.engine.output(begun.m, shown, begun.op.top_k))

    async def _feed_begin(self, op: Feed) -> FeedResult | _FeedStep:
        """A feed's checks, under its session's lock: the result an `Idempotency-Key` replays,
        or the step to run."""
        rec = await self._get(op.session_id, op.owner)
        # (a request without a key is never replayed: no fingerprint to compute)
        fp = (
            ""
            if op.key is None
            else self._fingerprint("feed", {"text": op.text, "top_k": op.top_k})
        )
        replay = await self._replay(rec, op.key, fp, FeedResult)
        if replay is not None:
            return replay
        self._check_version(rec, op.expected_version)
        m = self._model(rec)
        ids, pending = self.engine.encode_stream(m, rec.pending, op.text, "text")
        return _FeedStep(op, rec, m, ids, pending, fp)

    def _outputs(
        self,
        steps: list[_FeedStep],
        advanced: list[tuple[np.ndarray | None, SessionRecord] | Exception],
    ) -> list[Output | None]:
        """Each advanced step's output (`Engine.outputs`, a model's rows at once)."""
        out: list[Output | None] = [None] * len(steps)
        rows: dict[int, list[tuple[int, np.ndarray | None]]] = {}  # by id(model): (i, logits)
        for i, (step, adv) in enumerate(zip(steps, advanced, strict=True)):
            if not isinstance(adv, Exception):
                rows.setdefault(id(step.m), []).append((i, adv[0]))
        for mine in rows.values():
            m = steps[mine[0][0]].m
            got = self.engine.outputs(m, [r for _, r in mine], [steps[i].op.top_k for i, _ in mine])
            for (i, _), o in zip(mine, got, strict=True):
                out[i] = o
        return out

    async def _feed_end(
        self, step: _FeedStep, new: SessionRecord, output: Output | None
    ) -> FeedResult:
        """A feed's answer, committed with its new record."""
        result = FeedResult(
            session_id=public_id(step.rec.id),
            version=new.version,
            tokens=len(step.ids),
            pending_chars=len(step.pending),
            output=output,
        )
        await self._commit(step.rec, new, step.op.key, step.fp, result)
        return result

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
        await stack.enter_async_context(self.store.lock(store_id(op.session_id, op.owner)))
        try:
            rec = await self._get(op.session_id, op.owner)
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
            ids, pending = sequences.row(self.engine, m, seq, base.pending, op.text, op.ids)
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


@dataclass(slots=True)
class _FeedStep:
    """A feed between its checks and its commit, under its session's lock."""

    op: Feed
    rec: SessionRecord
    m: LoadedModel
    ids: list[int]  # the tokens it commits
    pending: str  # the unfinished word held back after them
    fp: str  # its request's fingerprint ("" without an Idempotency-Key)

    @property
    def work(self) -> tuple[LoadedModel, SessionRecord, list[int], str, int]:
        """Its arguments to `advance`."""
        return self.m, self.rec, self.ids, self.pending, self.rec.version + 1
