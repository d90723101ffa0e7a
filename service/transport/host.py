"""The engine process's side of the wire: one ROUTER socket, every worker's calls served by the
`InProcessClient` (so the engine behaves exactly as in a one-process server).

Each call runs as its own task: the host decodes the frame, hands the operation to the
`InProcessClient` and encodes its answer, knowing no operation by name. Calls of an operation
with a batch handler (session feeds: `SessionService.feed_batch`) that one worker sent and the
host read in one go run as ONE task, each answered under its own rid as soon as it is done; a
`Cancel` marks its call gone (not answered, nothing of it committed). So do the stateless
generations (`Generate`) one worker sent in one read: opened together (`open_many`), each one's
end answered from its stream's `on_end` callback, no task per stream (a `Cancel` of a call
already started, as every HTTP stream's slot ends, does not split them; the generations
are `host_streams.HostStreams`'). Everything read starts in the order it was read: each task's first step runs in the order the tasks were made, and a
batch takes its sessions' locks, or their places in line, in its first step. A stream's tokens skip
that task: the stream is routed to its worker's sink (`stream.Route`), so each decode step hands
the host ONE pair of arrays per worker (stream ids, token ids), sent as a `StepIds` frame that
the worker decodes; a stream whose tokens need text in the engine (logprobs) has each token
posted from the loop callback that emits the step (`Generation.forward_tokens`). A session
generation's task wakes only for the end, its `Result` or `Failed`. Frames for one worker that are ready in
the same loop iteration leave as one message (`channel.py`), as a worker's do. A `Cancel` (the worker's client went away)
cancels the task, which closes the generation: the decode slot and the session's lock are freed
and nothing is committed. A stream slot (`wire.SlotRef`) is taken or refused as the first frame
naming it is read (no task), and held until the worker cancels its id; a generation under a
refused slot is refused with the slot's error before it starts. A worker that dies cannot say
so: the supervisor does (`forget_worker`), and its calls are cancelled and its slots released
the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import zmq

from service import tracing
from service.engine.dispatch import Batcher
from service.engine.local import InProcessClient, LocalHold
from service.logging import get_logger
from service.protocol.messages import PROTOCOL_VERSION
from service.protocol.ops import Generate, Op, StreamOp
from service.transport import wire
from service.transport.channel import Channel
from service.transport.host_streams import HostStreams

log = get_logger("engine.host")


class EngineHost:
    def __init__(self, client: InProcessClient, address: str) -> None:
        self.client = client
        self.address = address
        # a plain (not asyncio) socket, read and written by a `Channel` (channel.py says why)
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sock: zmq.Socket[bytes] = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)  # a worker gone: drop its frames
        # no high-water mark: at the default (1000 frames) a ROUTER silently DROPS frames for a
        # worker that is behind, and a stream whose end was dropped never ends (found by the
        # 256-stream bench). Memory stays bounded by the workers' per-stream backlog bound.
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.bind(address)
        # frames for a worker wait until the loop has run every task that is ready, then leave
        # as ONE message: after a decode step every stream's frame goes out together
        self._channel = Channel(sock, self._read, self._start_batches)
        self._calls: dict[tuple[bytes, int], asyncio.Task[None]] = {}
        # calls of an operation with a batch handler (session feeds), read in this drain: by
        # worker and operation, each worker's run as one task when the drain ends
        # (rid, op, its caller's trace context when the worker sampled it)
        self._batching: dict[
            tuple[bytes, type], list[tuple[int, Op[Any], dict[str, str] | None]]
        ] = {}
        # a batched call's (batch's gone set, its index there): its Cancel marks it gone
        self._members: dict[tuple[bytes, int], tuple[set[int], int]] = {}
        self._batches: dict[asyncio.Task[None], bytes] = {}  # each batch's task, its worker
        # stateless generations read in this drain, by worker, with the stream slot each took
        # as it was read: each worker's opened as one task when the drain ends
        # (`HostStreams.open_batch`)
        self._opening: dict[bytes, list[tuple[wire.Call, LocalHold | None]]] = {}
        # the calls of both kinds read but not started yet: a `Cancel` of one of them starts
        # them first (so that it finds its call); any other `Cancel` is applied as it is read
        self._unstarted: set[tuple[bytes, int]] = set()
        # stream slots by (worker, slot id), granted or refused (`LocalHold.refusal`) until the
        # worker's Cancel: every generation of one request names the same slot
        self._slots: dict[tuple[bytes, int], LocalHold] = {}
        # the generations: opened together, run as tasks, and each worker's token sink
        self.streams = HostStreams(client, self._post)
        # the workers that said Hello: each gets the catalog again when the models change
        self._peers: set[bytes] = set()
        self._catalogs = 0  # catalogs sent so far (a worker keeps the newest)
        client.engine.on_change.append(self._catalog_changed)

    def _catalog_changed(self) -> None:
        self._catalogs += 1
        info = catalog_info(self.client, self._catalogs)
        for ident in self._peers:
            self._post(ident, info)

    async def serve(self) -> None:
        """Read the workers' frames until cancelled (each message read by the channel's reader
        callback, no task)."""
        self._channel.start()
        try:
            await asyncio.get_running_loop().create_future()  # until cancelled
        finally:
            self._channel.stop()

    def _read(self, ident: bytes | None, raw: bytes) -> None:
        assert ident is not None  # (a ROUTER's messages name their sender)
        try:
            got = wire.incoming_decoder.decode(raw)
        except Exception:
            log.error("undecodable frame from a worker", extra={"worker": ident.hex()})
            return
        for frame in got if isinstance(got, list) else (got,):
            self._read_frame(ident, frame)

    def _read_frame(self, ident: bytes, frame: wire.Call | wire.Frame) -> None:
        if isinstance(frame, wire.Call) and (op := self._batchable(frame)) is not None:
            self._batching.setdefault((ident, type(op)), []).append((frame.rid, op, frame.trace))
            self._unstarted.add((ident, frame.rid))
            return
        if isinstance(frame, wire.Call) and self._openable(frame):
            # (its slot decided now, as for any call: a `Cancel` read later finds it)
            hold = self._slot(ident, frame.slot) if frame.slot is not None else None
            self._opening.setdefault(ident, []).append((frame, hold))
            self._unstarted.add((ident, frame.rid))
            return
        if isinstance(frame, wire.Cancel) and (ident, frame.rid) not in self._unstarted:
            # the end of a call already started (over HTTP every stream's slot ends so): the
            # calls read before it need not start first, and the ones after it still batch
            self._cancel(ident, frame.rid)
            return
        self._start_batches()  # (first: every call starts in the order it was read)
        if isinstance(frame, wire.Cancel):
            self._cancel(ident, frame.rid)
        elif isinstance(frame, wire.Drained):
            self.streams.drained(ident, frame)
        elif isinstance(frame, wire.Call):
            self._start(ident, frame)

    def _batchable(self, call: wire.Call) -> Op[Any] | None:
        """The call's operation if it has a batch handler and nothing of its own to set up (a
        stream slot). A traced one's span is started as its batch starts (`_run_batch`)."""
        op = call.op
        if call.slot is not None:
            return None
        if isinstance(op, Op) and self.client.batcher(type(op)) is not None:
            return op
        return None

    @staticmethod
    def _openable(call: wire.Call) -> bool:
        """A stateless generation with no trace of its own (a traced call gets its own span)."""
        return isinstance(call.op, Generate) and not (call.trace is not None and tracing.enabled)

    def _start_batches(self) -> None:
        """Start the batchable calls and generations read so far: one task per worker and
        operation (a lone call as any other call)."""
        self._unstarted.clear()
        if self._opening:
            opening, self._opening = self._opening, {}
            for ident, opens in opening.items():  # (a lone one too: no task per stream)
                gone: set[int] = set()
                rids = [c.rid for c, _ in opens]
                self._track(ident, rids, gone, self.streams.open_batch(ident, opens, gone))
        if not self._batching:
            return
        pending, self._batching = self._batching, {}
        for (ident, kind), calls in pending.items():
            if len(calls) == 1:
                rid, op, trace = calls[0]
                self._start(ident, wire.Call(rid, op, trace=trace))
                continue
            batcher = self.client.batcher(kind)
            assert batcher is not None
            gone = set()
            rids = [rid for rid, _, _ in calls]
            traces = [t for _, _, t in calls] if tracing.enabled else []
            ops = [op for _, op, _ in calls]
            run = self._run_batch(ident, rids, ops, gone, batcher, traces)
            self._track(ident, rids, gone, run)

    def _track(
        self, ident: bytes, rids: list[int], gone: set[int], run: Coroutine[Any, Any, None]
    ) -> None:
        """Run a batch of one worker's calls as a task: a `Cancel` of one marks its index in
        `gone`; the worker's end cancels the task."""
        task = asyncio.create_task(run)
        self._batches[task] = ident
        keys = [(ident, rid) for rid in rids]
        for i, key in enumerate(keys):
            self._members[key] = (gone, i)

        def forget(t: asyncio.Task[None]) -> None:
            self._batches.pop(t, None)
            for key in keys:
                self._members.pop(key, None)

        task.add_done_callback(forget)

    async def _run_batch(
        self,
        ident: bytes,
        rids: list[int],
        ops: list[Op[Any]],
        gone: set[int],
        batcher: Batcher,
        carriers: list[dict[str, str] | None],
    ) -> None:
        replied: set[int] = set()
        # each sampled call's SERVER span (as `_traced` makes a lone call's), ended as it is
        # answered: the parent its handler gives that call's spans
        spans: list[tracing.Span | None] | None = None

        def reply(i: int, value: Any) -> None:
            replied.add(i)
            if spans is not None and (span := spans[i]) is not None:
                spans[i] = None
                tracing.end_span(span, value if isinstance(value, Exception) else None)
            if i in gone:  # (its caller cancelled it: it waits for no answer)
                return
            if isinstance(value, Exception):
                self._post(ident, wire.Failed(rids[i], wire.error_info(value)))
            else:
                self._post(ident, wire.Result(rids[i], wire.answer(value)))

        try:
            if any(carriers):
                spans = self._spans(ident, ops, carriers)
            if spans is None:
                await batcher(ops, reply, gone)
            else:
                await batcher(ops, reply, gone, [s.context if s else None for s in spans])
        except Exception as e:  # a bug: every call not answered yet is told, none left hanging
            log.exception("batch failed", extra={"calls": len(ops)})
            for i in range(len(ops)):
                if i not in replied:
                    reply(i, e)
        finally:
            for span in spans or ():  # (cancelled: the worker went)
                if span is not None:
                    tracing.end_span(span, asyncio.CancelledError())

    @staticmethod
    def _spans(
        ident: bytes, ops: list[Op[Any]], carriers: list[dict[str, str] | None]
    ) -> list[tracing.Span | None]:
        attrs = {"rpc.system": "rnnserve.wire", "rnnserve.worker": ident.decode("latin-1")}
        return [
            tracing.root(f"engine {type(op).__name__}", c, attrs) if c is not None else None
            for op, c in zip(ops, carriers, strict=True)
        ]

    def _cancel(self, ident: bytes, rid: int) -> None:
        member = self._members.get((ident, rid))
        if member is not None:
            member[0].add(member[1])
        self.streams.cancel(ident, rid)
        task = self._calls.get((ident, rid))
        if task is not None:
            task.cancel()
        slot = self._slots.pop((ident, rid), None)
        if slot is not None:
            slot.release()

    def _start(self, ident: bytes, call: wire.Call) -> None:
        op, rid = call.op, call.rid
        if isinstance(op, wire.HoldStream):  # a WebSocket's slot, asked for as it connects
            refusal = self._slot(ident, wire.SlotRef(rid, op.owner, op.rows)).refusal
            self._post(
                ident,
                wire.Result(rid, wire.answer(None))
                if refusal is None
                else wire.Failed(rid, wire.error_info(refusal)),
            )
            return
        # the slot is decided as the frame is read (no task), so that a `Cancel` read later
        # always finds it to release
        hold = self._slot(ident, call.slot) if call.slot is not None else None
        key = (ident, rid)
        if call.trace is not None and tracing.enabled:
            task = asyncio.create_task(self._traced(ident, rid, op, hold, call.trace))
        else:
            task = asyncio.create_task(self._run(ident, rid, op, hold))
        self._calls[key] = task
        task.add_done_callback(self._done(key))

    def _done(self, key: tuple[bytes, int]) -> Callable[[asyncio.Task[None]], None]:
        def forget(_task: asyncio.Task[None]) -> None:
            self._calls.pop(key, None)

        return forget

    def forget_worker(self, ident: bytes) -> int:
        """Cancel every call of a worker that is gone and release its stream slots; how many
        calls and slots there were."""
        gone = [t for (who, _), t in self._calls.items() if who == ident]
        gone += [t for t, who in self._batches.items() if who == ident]
        for t in gone:
            t.cancel()
        held = [k for k in self._slots if k[0] == ident]
        for k in held:
            self._slots.pop(k).release()
        streams = self.streams.forget(ident)
        self._peers.discard(ident)
        return len(gone) + len(held) + streams

    async def close(self) -> None:
        # the engine may still step the streams that are closing: what they post from now on
        # has no socket to go to (and one warning per step at 4,096 streams said nothing new)
        self._channel.stop()
        for slot in self._slots.values():
            slot.release()
        self._slots.clear()
        self.streams.close()
        tasks = [*self._calls.values(), *self._batches]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._channel.sock.close(linger=0)
        self._ctx.term()

    def _post(self, ident: bytes, frame: wire.Frame) -> None:
        self._channel.post(ident, frame)

    async def _traced(
        self,
        ident: bytes,
        rid: int,
        op: wire.Operation,
        hold: LocalHold | None,
        carrier: dict[str, str],
    ) -> None:
        """`_run` in the engine's SERVER span for the worker's call (`engine <Op>`: the wire
        hop's far end and the operation's handling), current for the task: the engine's spans
        for the call (store, queue wait, batch, decode) are its children."""
        attrs = {"rpc.system": "rnnserve.wire", "rnnserve.worker": ident.decode("latin-1")}
        with tracing.remote_span(f"engine {type(op).__name__}", carrier, attrs):
            await self._run(ident, rid, op, hold)

    async def _run(
        self, ident: bytes, rid: int, op: wire.Operation, hold: LocalHold | None
    ) -> None:
        try:
            if isinstance(op, StreamOp):
                await self.streams.run(ident, rid, op, hold)
                return
            if isinstance(op, Op):
                value: Any = await self.client.call(op)
            elif isinstance(op, wire.Hello):
                self._peers.add(ident)
                value = catalog_info(self.client, self._catalogs)
            else:  # pragma: no cover (HoldStream is answered as it is read)
                raise TypeError(f"unexpected operation {type(op).__name__}")
            self._post(ident, wire.Result(rid, wire.answer(value)))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._post(ident, wire.Failed(rid, wire.error_info(e)))

    def _slot(self, ident: bytes, ref: wire.SlotRef) -> LocalHold:
        """The slot `ref` names, taken (or refused) by the first frame that names it."""
        key = (ident, ref.rid)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = self.client.hold_stream(ref.owner, ref.rows)
        return slot


def catalog_info(c: InProcessClient, generation: int = 0) -> wire.CatalogInfo:
    cat = c.catalog
    models = [
        wire.ModelEntry(
            m.manifest.model_dump(mode="json"),
            m.sha256,
            m.variant,
            m.provider,
            m.created,
            m.settings,
            cat.models.get(m.name) is m,
            m.draining,
        )
        for m in cat.versions.values()
    ]
    return wire.CatalogInfo(
        wire.WIRE_VERSION, PROTOCOL_VERSION, models, dict(cat.failed), generation
    )


async def close_quietly(host: EngineHost) -> None:
    with contextlib.suppress(Exception):
        await host.close()
