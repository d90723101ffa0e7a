"""The worker-side handles of engine calls that outlive one reply: `RemoteGeneration` (a
generation's tokens as they arrive, with the worker's backlog bound) and `RemoteHold` (a stream
slot in the engine). Both belong to a `remote.RemoteClient`, whose reader feeds them and whose
socket they cancel on.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import msgspec

from service import tracing
from service.errors import ServiceError
from service.protocol.events import (
    EVENT_BYTES,
    LOGPROB_BYTES,
    ClientTooSlow,
    EventsFromBatches,
    TokenEvent,
)
from service.protocol.messages import Finished, GenerationResult, TokenLogprob
from service.protocol.stop_text import StopMatcher
from service.transport import wire

if TYPE_CHECKING:
    from service.transport.remote import RemoteClient


# queued by `Finishing`: the engine waits to commit until the consumer gets past it
_FINISHING = object()


class RemoteGeneration(EventsFromBatches):
    """A generation running in the engine process (`GenerationStream`)."""

    def __init__(
        self, client: RemoteClient, rid: int, max_backlog_bytes: int, stops: tuple[str, ...] = ()
    ) -> None:
        self._client, self._rid = client, rid
        # a plain buffer + one waiter (as `Stream`): cheaper than asyncio.Queue, one put per
        # stream per engine step
        self._items: deque[Any] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._backlog = 0
        self._max_backlog = max_backlog_bytes
        self._closed = False
        self._ended = False
        # resolved when the engine has started the generation (or refused it: the error)
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # a routed stream (`wire.Opened.model`): its tokens arrive as ids, decoded here with
        # the model's vocabulary, counted here, and its text is this worker's to report
        self._vocab: list[str] | None = None
        self._stops = stops
        self._stopper: StopMatcher | None = None  # the text its stop strings hold back
        self._pieces: list[str] = []
        self._next = 0  # the next token's index
        self.span: tracing.Span | None = (
            None  # its CLIENT span (tracing on and sampled), ended by aclose
        )

    def decode_with(self, vocab: list[str]) -> None:
        self._vocab = vocab
        if any(self._stops):
            self._stopper = StopMatcher(self._stops)

    # -- fed by the client's reader
    def _id(self, token_id: int, last: bool) -> None:
        """One token of a routed stream (from a `StepIds` frame): decoded, counted and its stop
        strings' text matched here, as the engine does for its own (`Stream.emit`); `last`: the
        stream ends with it (text held back for a stop string that did not come is released)."""
        if self._ended or self._vocab is None:
            return
        text = self._vocab[token_id]
        index = self._next
        self._next += 1
        if self._stopper is not None:
            text = self._stopper.release(text, last)
        if not text:  # held back (or a token without text): nothing to hand over
            return
        self._backlog += EVENT_BYTES
        if self._backlog > self._max_backlog:
            self._too_slow()
            return
        self._pieces.append(text)
        self._put(TokenEvent(text, token_id, index))

    def _too_slow(self) -> None:
        self._ended = True
        self._client._cancel(self._rid)
        self._put(
            ClientTooSlow(
                f"the client fell more than {self._max_backlog} bytes behind the stream "
                "(RNNSERVE_STREAM_BUFFER_BYTES); the generation was stopped"
            )
        )

    def _tokens(self, tokens: list[wire.Token]) -> None:
        if self._ended:
            return
        cost = EVENT_BYTES * len(tokens)
        for t in tokens:
            if t.logprob is not None:
                cost += LOGPROB_BYTES * len(t.logprob.top)
        self._backlog += cost
        if self._backlog > self._max_backlog:
            self._too_slow()
            return
        self._put(tokens)

    def _put(self, item: Any) -> None:
        self._items.append(item)
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _finishing(self) -> None:
        if not self._ended:
            self._put(_FINISHING)

    def _end(self, item: GenerationResult | ServiceError) -> None:
        if not self.opened.done():
            if isinstance(item, BaseException):  # refused before it started: the call's error
                self.opened.set_exception(item)
                self._ended = self._closed = True
                self._client._streams.pop(self._rid, None)
                return
            self.opened.set_result(None)  # a replay: its result, no tokens
        if not self._ended:
            self._ended = True
            self._put(item)

    # -- GenerationStream
    async def batches(
        self, keep_logprobs: bool = True
    ) -> AsyncIterator[list[TokenEvent | Finished]]:
        logprobs: list[TokenLogprob] = []
        try:
            items = self._items
            while True:
                if not items:
                    self._waiter = asyncio.get_running_loop().create_future()
                    await self._waiter
                    continue
                ready = list(items)  # everything that arrived: one batch
                items.clear()
                self._backlog = 0
                out: list[TokenEvent | Finished] = []
                for item in ready:
                    if type(item) is TokenEvent:  # most items: a token without logprobs
                        out.append(item)
                        continue
                    if item is _FINISHING:
                        if out:  # hand the last tokens over first; ask again, then commit
                            yield out
                            out = []
                        self._client._drained(self._rid, self._text())
                        continue
                    if isinstance(item, list):
                        for t in item:
                            out.append(TokenEvent(t.text, t.token_id, t.index, t.logprob))
                            if keep_logprobs and t.logprob is not None:
                                lp = t.logprob
                                logprobs.append(TokenLogprob(t.text, lp.logprob, lp.top))
                        continue
                    if isinstance(item, BaseException):
                        if out:
                            yield out  # the tokens before a failure still go out
                        raise item
                    if self._vocab is not None:  # the engine left the text to this worker
                        item = msgspec.structs.replace(item, text=self._text())
                    out.append(self._finish(item, keep_logprobs, logprobs))
                    yield out
                    return
                if out:
                    yield out
        finally:
            await self.aclose()

    def _text(self) -> str | None:
        """What this worker decoded, for a routed stream (None: the engine decodes)."""
        return "".join(self._pieces) if self._vocab is not None else None

    @staticmethod
    def _finish(result: GenerationResult, keep: bool, logprobs: list[TokenLogprob]) -> Finished:
        if keep and result.logprobs is None and logprobs:
            result = msgspec.structs.replace(result, logprobs=tuple(logprobs))
        elif not keep and result.logprobs is not None:
            result = msgspec.structs.replace(result, logprobs=None)
        return Finished(result)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.span is not None:
            self.span.set_attribute("rnnserve.cancelled", not self._ended)
            tracing.end_span(self.span)
            self.span = None
        if not self._ended:
            self._ended = True
            self._client._cancel(self._rid)
        self._client._streams.pop(self._rid, None)


class RemoteHold:
    """A stream slot in the engine, named by the id `rid`. Nothing is sent for it on its own:
    an HTTP stream's generations carry its `wire.SlotRef` (the engine takes the slot as it reads
    the first of them), and a WebSocket asks for it with `confirmed()`. `release()` sends
    `Cancel(rid)` once the engine has seen it, so an HTTP stream costs one frame for its slot."""

    __slots__ = ("_client", "_sent", "owner", "rid", "rows")

    def __init__(self, client: RemoteClient, rid: int, owner: str | None, rows: int = 1) -> None:
        self._client: RemoteClient | None = client
        self._sent = False
        self.owner = owner
        self.rid = rid
        self.rows = rows

    def ref_for(self, client: RemoteClient) -> wire.SlotRef | None:
        """The slot for a generation `client` is about to send (None: not this client's)."""
        if self._client is not client:
            return None
        self._sent = True
        return wire.SlotRef(self.rid, self.owner, self.rows)

    def widen(self, rows: int) -> None:
        # the engine takes the rows with the first frame naming the slot, so they are known first
        if self._sent:
            raise RuntimeError("a stream slot is widened before its first generation")
        self.rows = max(self.rows, rows)

    async def confirmed(self) -> None:
        if self._client is None:
            raise RuntimeError("this stream slot was released")
        self._sent = True
        await self._client._unary(wire.HoldStream(self.owner, self.rows), self.rid)

    def release(self) -> None:
        if self._client is not None:
            if self._sent:
                self._client._cancel(self.rid)
            self._client = None
