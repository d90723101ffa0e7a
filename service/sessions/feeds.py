"""Feeding a session (DESIGN §4): `feed`, one at a time under the session's lock, and
`feed_batch`, the feeds the engine process read together from one worker, run as one. Both run
the same steps (`_feed_begin`: the checks; `advance_many`; `_feed_end`: the answer and the
commit), so a feed in a batch is exactly the feed it would be alone."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from service import tracing
from service.engine import outputs
from service.engine.dispatch import Reply, handles, handles_batch
from service.engine.registry import LoadedModel
from service.protocol.messages import FeedResult, Output
from service.protocol.ops import Feed
from service.sessions import IdempotencyRecord, SessionRecord
from service.sessions.rules import SessionRules
from service.sessions.store import LocalRecords, public_id, store_id

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext


class SessionFeeds(SessionRules):
    """The feed operations of the session service (`SessionService` is one)."""

    @handles(Feed)
    async def feed(self, op: Feed) -> FeedResult:
        async with self.store.lock(store_id(op.session_id, op.owner), op.key):
            result = await self._feed_locked(op)
        assert result is not None  # (its caller cannot be gone: it is awaiting this)
        return result

    @property
    def batching(self) -> bool:
        """Whether feeds may run in batches (`feed_batch`): where the store takes its locks
        without I/O, so a batch takes its sessions, or their places in line, as it is read."""
        return self.store.local_locks

    @handles_batch(Feed)
    async def feed_batch(
        self,
        ops: Sequence[Feed],
        reply: Reply,
        gone: Container[int],
        traces: Sequence[SpanContext | None] | None = None,
    ) -> None:
        """Feeds read together (one worker's, from the wire) run as one. In its first step,
        before anything read after it runs, the batch takes each feed's session, or its place
        in that session's line when it is busy (arrival order, as `feed`'s lock); a feed that
        waits runs on its own when its turn comes. The others run together: `feed`'s checks,
        every prefill queued with one wake-up of the engine thread (`advance_many`), and each
        committed and replied on its own (one that fails, or whose caller is `gone` before its
        commit, leaves its session as it was). `traces`: each sampled feed's span (tracing on),
        current for its store calls (`tracing.call_under`) and its prefill's parent."""
        local = self.store.local  # (the record calls without a coroutine each)
        held: list[str] = []
        queued: list[tuple[int, str, asyncio.Future[None], asyncio.Task[None]]] = []
        started: set[int] = set()  # the queued feeds whose task ran (and owns its turn)
        steps: list[tuple[int, _FeedStep]] = []
        try:
            try:
                for i, op in enumerate(ops):
                    sid = store_id(op.session_id, op.owner)
                    turn = self.store.lock_now(sid)
                    parent = traces[i] if traces is not None else None
                    if turn is not None:  # busy: in line now, run when its turn comes
                        run = self._feed_in_turn(i, op, sid, turn, started, reply, gone)
                        task = (
                            asyncio.create_task(run)
                            if parent is None
                            else asyncio.create_task(run, context=tracing.context_under(parent))
                        )
                        queued.append((i, sid, turn, task))
                        continue
                    held.append(sid)
                    try:
                        if local is None:
                            begun = await tracing.within(parent, self._feed_begin(op))
                        elif traces is None:  # (no feed here is traced: no span to make current)
                            begun = self._feed_begin_now(local, op)
                        else:
                            begun = tracing.call_under(parent, self._feed_begin_now, local, op)
                    except Exception as e:
                        reply(i, e)
                        continue
                    if isinstance(begun, FeedResult):
                        reply(i, begun)
                    else:
                        steps.append((i, begun))
                advanced = await self.advance_many(
                    [s.work for _, s in steps],
                    [traces[i] for i, _ in steps] if traces is not None else None,
                )
                shown = self._outputs([s for _, s in steps], advanced)
                for (i, step), adv, output in zip(steps, advanced, shown, strict=True):
                    if isinstance(adv, Exception):
                        reply(i, adv)
                    elif i not in gone:
                        try:
                            parent = traces[i] if traces is not None else None
                            if local is None:
                                end = self._feed_end(step, adv[1], output)
                                result = await tracing.within(parent, end)
                            elif traces is None:
                                result = self._feed_end_now(local, step, adv[1], output)
                            else:
                                result = tracing.call_under(
                                    parent, self._feed_end_now, local, step, adv[1], output
                                )
                            reply(i, result)
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
        local = self.store.local  # (the record calls without a coroutine each, as in a batch)
        begun = self._feed_begin_now(local, op) if local is not None else await self._feed_begin(op)
        if isinstance(begun, FeedResult):
            return begun
        shown, new = await self.advance(*begun.work)
        if gone():
            return None
        output = outputs.output(begun.m, shown, begun.op.top_k)
        if local is not None:
            return self._feed_end_now(local, begun, new, output)
        return await self._feed_end(begun, new, output)

    async def _feed_begin(self, op: Feed) -> FeedResult | _FeedStep:
        """A feed's checks, under its session's lock: the result an `Idempotency-Key` replays,
        or the step to run."""
        rec = await self._get(op.session_id, op.owner)
        stored = None if op.key is None else await self.store.get_idempotent(rec.id, op.key)
        return self._feed_checked(op, rec, stored)

    def _feed_begin_now(self, local: LocalRecords, op: Feed) -> FeedResult | _FeedStep:
        """`_feed_begin` with the store's records in this process (no coroutine)."""
        rec = self._get_now(local, op.session_id, op.owner)
        stored = None if op.key is None else local.get_idempotent_now(rec.id, op.key)
        return self._feed_checked(op, rec, stored)

    def _feed_checked(
        self, op: Feed, rec: SessionRecord, stored: IdempotencyRecord | None
    ) -> FeedResult | _FeedStep:
        """`_feed_begin`'s checks on the record read and the key's stored record, if any."""
        # (a request without a key is never replayed: no fingerprint to compute)
        fp = (
            ""
            if op.key is None
            else self._fingerprint("feed", {"text": op.text, "top_k": op.top_k})
        )
        replay = self._replayed(stored, fp, FeedResult)
        if replay is not None:
            return replay
        self._check_version(rec, op.expected_version)
        m = self._model(rec)
        ids, pending = m.view.encode_stream(rec.pending, op.text, "text")
        return _FeedStep(op, rec, m, ids, pending, fp)

    def _outputs(
        self,
        steps: list[_FeedStep],
        advanced: list[tuple[np.ndarray | None, SessionRecord] | Exception],
    ) -> list[Output | None]:
        """Each advanced step's output (`outputs.outputs`, a model's rows at once)."""
        out: list[Output | None] = [None] * len(steps)
        rows: dict[int, list[tuple[int, np.ndarray | None]]] = {}  # by id(model): (i, logits)
        for i, (step, adv) in enumerate(zip(steps, advanced, strict=True)):
            if not isinstance(adv, Exception):
                rows.setdefault(id(step.m), []).append((i, adv[0]))
        for mine in rows.values():
            m = steps[mine[0][0]].m
            got = outputs.outputs(m, [r for _, r in mine], [steps[i].op.top_k for i, _ in mine])
            for (i, _), o in zip(mine, got, strict=True):
                out[i] = o
        return out

    async def _feed_end(
        self, step: _FeedStep, new: SessionRecord, output: Output | None
    ) -> FeedResult:
        """A feed's answer, committed with its new record."""
        result = step.result(new, output)
        await self._commit(step.rec, new, step.op.key, step.fp, result)
        return result

    def _feed_end_now(
        self, local: LocalRecords, step: _FeedStep, new: SessionRecord, output: Output | None
    ) -> FeedResult:
        """`_feed_end` with the store's records in this process (no coroutine)."""
        result = step.result(new, output)
        local.commit_now(new, step.rec.version, self._idempotency(step.op.key, step.fp, result))
        return result


@dataclass(slots=True)
class _FeedStep:
    """A feed between its checks and its commit, under its session's lock."""

    op: Feed
    rec: SessionRecord
    m: LoadedModel
    ids: list[int]  # the tokens it commits
    pending: str  # the unfinished word held back after them
    fp: str  # its request's fingerprint ("" without an Idempotency-Key)

    def result(self, new: SessionRecord, output: Output | None) -> FeedResult:
        """Its answer, once advanced to `new`."""
        return FeedResult(
            session_id=public_id(self.rec.id),
            version=new.version,
            tokens=len(self.ids),
            pending_chars=len(self.pending),
            output=output,
        )

    @property
    def work(self) -> tuple[LoadedModel, SessionRecord, list[int], str, int]:
        """Its arguments to `advance`."""
        return self.m, self.rec, self.ids, self.pending, self.rec.version + 1
