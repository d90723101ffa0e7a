"""A generation stream: per-stream sampling state and the events its consumer reads, or the
route its tokens take as arrays (`Route`)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from service.engine.sampling import SamplingParams
from service.engine.stops import StopAutomaton
from service.protocol.events import EVENT_BYTES, LOGPROB_BYTES, ClientTooSlow, TokenEvent
from service.protocol.messages import FinishReason, StepLogprob
from service.protocol.stop_text import StopMatcher

if TYPE_CHECKING:
    from service.engine.traced import DecodeTrace

# (stream ids, token ids, ids of the streams that end with this token, or None when none may):
# one decode step's tokens for one consumer, row for row
TokenSink = Callable[[np.ndarray, np.ndarray, np.ndarray | None], None]


@dataclass(frozen=True, eq=False)
class Route:
    """Where a stream's tokens go instead of its event buffer: the decode step hands `sink` the
    ids and tokens of all its rows routed there as two arrays, this stream's under `rid`. In the
    engine process a sink is a worker's outbox: the engine's Python per step is then one call
    per worker, not per stream, and the worker decodes the tokens (it has the vocabulary).
    Only the end (`DoneEvent`) and errors still reach the stream's buffer."""

    sink: TokenSink
    rid: int


@dataclass(frozen=True)
class DoneEvent:
    finish_reason: FinishReason
    completion_tokens: int
    # (K,) and one state row each, after the last generated token; None for a stream that
    # asked for no final state (`Stream.keep_final`: nothing commits it)
    logits: np.ndarray | None
    states: list[np.ndarray] | None
    stop: str | None = None


@dataclass(frozen=True)
class ErrorEvent:
    error: BaseException


Event = TokenEvent | DoneEvent | ErrorEvent


@dataclass(eq=False)
class Stream:
    """Joins a model's decode batch with a state row and the logits to sample the first token.

    Two threads touch a stream, each its own fields: the model's engine thread runs the stop
    matcher (`stop_text`) and sets `first_token_at`; the event loop owns the event buffer (`emit`,
    `finish`, `fail`, `iter_events`), to which the engine hands results with one
    `call_soon_threadsafe` per step. `cancel()` is a flag the engine reads before each step.
    """

    params: SamplingParams
    logits: np.ndarray  # (K,)
    states: list[np.ndarray]  # one row each
    decode: Callable[[int], str]
    created: float = field(default_factory=time.perf_counter)
    # tokens produced but not yet taken by the consumer, in (estimated) bytes: past this the
    # stream is cancelled and ends with `client_too_slow` (the engine never waits on a consumer,
    # so a client that stops reading would otherwise buffer its whole generation here)
    max_backlog_bytes: int = 2**62
    cancelled: bool = False
    produced: int = 0  # tokens handed to the consumer so far
    prompt_tokens: int = 0  # tokens prefilled before the first sampled one (usage)
    first_token_at: float | None = None
    # the consumer takes the tokens as arrays (see Route); ignored (None) for a stream whose
    # tokens need the per-row path (logprobs)
    route: Route | None = None
    # where its stop strings end it, decided over the batch (`stops.StopTable`); the text held
    # back and released is matched by whoever decodes the tokens (`stop_text` for its own)
    stop_automaton: StopAutomaton | None = None
    trace: DecodeTrace | None = None  # its `decode` span (a sampled request's), ended at its end
    # its logits and state rows after the last token come with its end (a session commits
    # them); a stateless generation's are never read, so the engine thread skips the copies
    keep_final: bool = True

    def __post_init__(self) -> None:
        self.stopper = StopMatcher(self.params.stop)
        self.has_stops = bool(self.stopper.stops)
        if self.params.logprobs is not None:
            self.route = None
        # a plain buffer + one waiter: cheaper than asyncio.Queue, and a consumer that falls
        # behind drains several events per wake-up
        self._buf: deque[Event] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.wants_logprobs = self.params.logprobs is not None
        # set by the scheduler when the stream joins: tells it that a row needs removing, so a
        # step scans the batch for cancelled rows only when one was cancelled
        self.on_cancel: Callable[[], None] | None = None
        # its row has left the batch for good (it finished or failed): a cancel from then on
        # (every consumer closes its stream at its end) leaves the scheduler nothing to scan for
        self._ended = False
        self.backlog_bytes = 0
        self._event_bytes = EVENT_BYTES + LOGPROB_BYTES * (self.params.logprobs or 0)
        # `forward_tokens`: tokens go straight to this callback as they are emitted
        self._sink: Callable[[TokenEvent], None] | None = None
        # `on_end`: the terminal event goes straight to this callback instead of the buffer
        self._end: Callable[[DoneEvent | ErrorEvent], None] | None = None

    def cancel(self) -> None:
        """The consumer went away: the scheduler drops the stream before its next step."""
        self.cancelled = True
        if self.on_cancel is not None and not self._ended:
            self.on_cancel()
        if self.trace is not None:
            self.trace.end("cancelled")
            self.trace = None

    # -- engine thread ----------------------------------------------------------------------

    def stop_text(self, token: int, last: bool) -> str:
        """A token's text through the stop matcher: what is released now."""
        return self.stopper.release(self.decode(token), last)

    # -- event loop -------------------------------------------------------------------------

    def _push(self, ev: Event) -> None:
        if self._end is not None and not isinstance(ev, TokenEvent):
            end, self._end = self._end, None
            end(ev)
            return
        self._buf.append(ev)
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def forward_tokens(self, sink: Callable[[TokenEvent], None]) -> None:
        """From now on hand every token event to `sink` as it is emitted (those already
        buffered first, in order); only the terminal event is left for `iter_batches`.

        For a consumer that never falls behind because it only forwards: the engine process's
        host, which posts each token to its worker's outbox (the worker bounds the backlog).
        Waking a task per stream per step to move one token was most of the engine's Python
        time per token at 256 streams (docs/benchmarks.md)."""
        buf = self._buf
        while buf and isinstance(ev := buf[0], TokenEvent):
            buf.popleft()
            sink(ev)
        self.backlog_bytes = 0
        self._sink = sink

    def on_end(self, end: Callable[[DoneEvent | ErrorEvent], None]) -> None:
        """Hand the terminal event (`DoneEvent` or `ErrorEvent`) to `end` when it comes, on the
        loop, instead of buffering it for `iter_batches`; at once if it has come already. For a
        stream whose tokens do not reach the buffer (routed, or after `forward_tokens`).

        That leaves its consumer nothing to wait on: the engine process's host opens the
        generations one worker asked for together and answers each one's end from this
        callback, with no task per stream (docs/benchmarks.md)."""
        buf = self._buf
        if buf:
            ev = buf.popleft()
            assert not isinstance(ev, TokenEvent), "on_end before forward_tokens"
            end(ev)
            return
        self._end = end

    @property
    def forwarded(self) -> bool:
        """Its tokens go to a sink (`forward_tokens`), not to `iter_batches`."""
        return self._sink is not None

    def emit(self, token: int, text: str | None, logprob: StepLogprob | None) -> None:
        """One sampled token (`text` None: its plain decoding; stop matching gives it)."""
        if self.cancelled:  # steps already under way when it was cancelled
            return
        self.produced += 1
        if text is None:
            text = self.decode(token)
        if not text and logprob is None:  # held back by stop matching: nothing to hand over
            return
        if self._sink is not None:
            self._sink(TokenEvent(text, token, self.produced - 1, logprob))
            return
        self.backlog_bytes += self._event_bytes
        if self.backlog_bytes > self.max_backlog_bytes:
            self.cancel()
            self._push(
                ErrorEvent(
                    ClientTooSlow(
                        f"the client fell more than {self.max_backlog_bytes} bytes behind the "
                        "stream (RNNSERVE_STREAM_BUFFER_BYTES); the generation was stopped"
                    )
                )
            )
            return
        self._push(TokenEvent(text, token, self.produced - 1, logprob))

    def finish(
        self,
        logits: np.ndarray | None,
        states: list[np.ndarray] | None,
        sampled: int,
        stop: str | None,
    ) -> None:
        """The row ended after `sampled` tokens, on the stop string `stop` or by length."""
        self._ended = True
        if self.cancelled:
            return
        reason: FinishReason = "stop" if stop is not None else "length"
        if self.trace is not None:
            self.trace.end(reason, sampled)
            self.trace = None
        self._push(DoneEvent(reason, sampled, logits, states, stop))

    def fail(self, error: BaseException) -> None:
        self._ended = True  # (a failed row is out of the batch, or never joined it)
        if self.trace is not None:
            self.trace.end("failed", error=error)
            self.trace = None
        self._push(ErrorEvent(error))

    async def iter_batches(self) -> AsyncIterator[list[Event]]:
        """Every event buffered at each wake-up, in order, ending with the terminal event.

        A consumer that fell behind gets several tokens at once and can write them with one
        send: under load, fewer, larger writes instead of one syscall per token."""
        buf = self._buf
        while True:
            if buf:
                batch = list(buf)
                buf.clear()
                self.backlog_bytes = 0
                for i, ev in enumerate(batch):
                    if not isinstance(ev, TokenEvent):
                        yield batch[: i + 1]
                        return
                yield batch
                continue
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    async def iter_events(self) -> AsyncIterator[Event]:
        async for batch in self.iter_batches():
            for ev in batch:
                yield ev
