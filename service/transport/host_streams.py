"""The engine host's generations (`host.EngineHost` reads the frames, this runs the streams): a
worker's stateless generations opened together, each one's end answered from its stream's
`on_end` callback (no task per stream); a session generation, or a traced one, as a task that
commits only after the worker's `Drained`; and each worker's token sink, through which a decode
step hands the host ONE pair of arrays per worker (`StepIds`).

Everything here runs on the engine process's event loop; frames leave through `post` (the
host's `Channel`: one message per worker per loop iteration).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

import numpy as np

from service.engine.generation import Generation
from service.engine.local import InProcessClient, LocalHold
from service.engine.stream import DoneEvent, ErrorEvent, Route, TokenSink
from service.protocol.events import TokenEvent
from service.protocol.messages import Finished
from service.protocol.ops import Generate, SessionGenerate, StreamOp
from service.transport import wire

Post = Callable[[bytes, wire.Frame], None]


class HostStreams:
    def __init__(self, client: InProcessClient, post: Post) -> None:
        self.client = client
        self._post = post
        # the generations opened together, until their end: a `Cancel` stops one
        self.running: dict[tuple[bytes, int], Generation] = {}
        # each worker's token sink (`stream.Route`): a decode step's ids for its streams
        self._sinks: dict[bytes, TokenSink] = {}
        # session generations waiting for their worker's `Drained` (and its text) to commit
        self._drains: dict[tuple[bytes, int], asyncio.Future[str | None]] = {}

    def drained(self, ident: bytes, frame: wire.Drained) -> None:
        """The worker's client was handed every token of a session generation: it may commit."""
        drained = self._drains.get((ident, frame.rid))
        if drained is not None and not drained.done():
            drained.set_result(frame.text)

    def cancel(self, ident: bytes, rid: int) -> None:
        """Stop a generation opened together with others (its worker's client went away)."""
        gen = self.running.pop((ident, rid), None)
        if gen is not None:
            gen.stream.cancel()

    def forget(self, ident: bytes) -> int:
        """A worker is gone: stop its generations opened together and drop its sink; how many
        generations there were (its task-run ones are the host's to cancel)."""
        streams = [k for k in self.running if k[0] == ident]
        for k in streams:
            self.running.pop(k).stream.cancel()
        self._sinks.pop(ident, None)
        return len(streams)

    def close(self) -> None:
        for gen in self.running.values():
            gen.stream.cancel()
        self.running.clear()

    async def open_batch(
        self, ident: bytes, calls: list[tuple[wire.Call, LocalHold | None]], gone: set[int]
    ) -> None:
        """Open the generations one worker asked for in one read together (`open_many`: one
        wake-up of the engine thread for their prefills, one for their joins) and answer each
        one's end from its stream's `on_end`: no task per stream."""
        live: list[int] = []
        for i, (call, hold) in enumerate(calls):
            if hold is not None and hold.refusal is not None:  # (as `open` refuses it)
                self._post(ident, wire.Failed(call.rid, wire.error_info(hold.refusal)))
            else:
                live.append(i)
        sink = self.sink(ident)
        ops = [cast(Generate, calls[i][0].op) for i in live]
        routes: list[Route | None] = [Route(sink, calls[i][0].rid) for i in live]
        opened = await self.client.open_many(ops, routes) if live else []
        for i, gen in zip(live, opened, strict=True):
            rid = calls[i][0].rid
            if isinstance(gen, Generation) and i in gone:
                gen.stream.cancel()  # (its caller went while it started)
            elif isinstance(gen, Generation):
                self._opened(ident, rid, gen)
            elif i not in gone:
                self._post(ident, wire.Failed(rid, wire.error_info(gen)))

    def _opened(self, ident: bytes, rid: int, gen: Generation) -> None:
        """Tell the worker its generation started; from then on its tokens go out as the
        engine emits them (by its route, or one `Tokens` frame each) and its end from the
        stream's `on_end`."""
        key = (ident, rid)
        self.running[key] = gen
        post = self._post
        post(ident, wire.Opened(rid, (gen.key or gen.model) if gen.routed else None))
        if not gen.routed:
            gen.forward_tokens(lambda ev: post(ident, _tokens(rid, ev)))

        def end(ev: DoneEvent | ErrorEvent) -> None:
            if self.running.pop(key, None) is None:
                return  # (cancelled: nobody waits)
            if isinstance(ev, ErrorEvent):
                post(ident, wire.Failed(rid, wire.error_info(ev.error)))
            else:
                post(ident, wire.Result(rid, wire.answer(gen.result_of(ev))))

        gen.stream.on_end(end)

    def sink(self, ident: bytes) -> TokenSink:
        """Where the engine's decode steps put this worker's routed tokens: a `StepIds` frame
        in its outbox (after any frame already there, before any posted later)."""
        known = self._sinks.get(ident)
        if known is not None:
            return known
        post = self._post

        def sink(rids: np.ndarray, ids: np.ndarray, ends: np.ndarray | None) -> None:
            post(ident, wire.StepIds.of(rids, ids, ends))

        self._sinks[ident] = sink
        return sink

    async def run(self, ident: bytes, rid: int, op: StreamOp, hold: LocalHold | None) -> None:
        """A generation as the task of its call (a session's, or a traced one): its end, and a
        session's commit after the worker's `Drained`, awaited here."""
        before_commit = None
        if isinstance(op, SessionGenerate):
            # commit only once the worker's client has been handed every token: the engine
            # reads the stream ahead of the client, and a client gone before the end must
            # leave the session as it was (docs/reliability.md, guarantee 2)
            drained: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
            self._drains[(ident, rid)] = drained

            async def before_commit() -> str | None:
                self._post(ident, wire.Finishing(rid))
                return await drained  # (the text its client got, when the worker decoded it)

        route = Route(self.sink(ident), rid)
        try:
            gen = await self.client.open(op, hold, before_commit=before_commit, route=route)
        except BaseException:
            self._drains.pop((ident, rid), None)
            raise
        try:
            self._post(ident, wire.Opened(rid, (gen.key or gen.model) if gen.routed else None))
            post = self._post

            # a stream the engine decodes (logprobs): each token goes out as the engine emits
            # it (no task wakes per token), in a frame that carries its logprobs, from which
            # the worker rebuilds a result's list
            def send(ev: TokenEvent) -> None:
                post(ident, _tokens(rid, ev))

            gen.forward_tokens(send)
            async for batch in gen.batches(keep_logprobs=False):
                for ev in batch:  # only the end is left (Finished, or the error raised) ...
                    if isinstance(ev, Finished):
                        post(ident, wire.Result(rid, wire.answer(ev.result)))
                    else:  # ... but a token that got here would still go out, in order
                        send(ev)
        finally:
            self._drains.pop((ident, rid), None)
            await gen.aclose()


def _tokens(rid: int, ev: TokenEvent) -> wire.Tokens:
    return wire.Tokens(rid, [wire.Token(ev.text, ev.token_id, ev.index, ev.logprob)])
