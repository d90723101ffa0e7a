"""A generation stream: per-stream sampling state and the events its consumer reads."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import numpy as np

from service.engine.sampling import SamplingParams, StopMatcher


class TokenEvent:
    """One generated token (a plain slotted class: cheap to make, one per stream per step)."""

    __slots__ = ("index", "logprob", "text", "token_id")

    def __init__(
        self, text: str, token_id: int, index: int, logprob: dict[str, object] | None = None
    ) -> None:
        self.text = text  # text released by this token (stop-string lookahead may delay text)
        self.token_id = token_id
        self.index = index
        self.logprob = logprob


@dataclass(frozen=True)
class DoneEvent:
    finish_reason: str  # "length" | "stop"
    completion_tokens: int
    logits: np.ndarray  # (K,) after the last generated token
    states: list[np.ndarray]  # one row each, after the last generated token
    stop: str | None = None


@dataclass(frozen=True)
class ErrorEvent:
    error: BaseException


Event = TokenEvent | DoneEvent | ErrorEvent


@dataclass(eq=False)
class Stream:
    """Joins a model's decode batch with a state row and the logits to sample the first token."""

    params: SamplingParams
    logits: np.ndarray  # (K,)
    states: list[np.ndarray]  # one row each
    decode: Callable[[int], str]
    created: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    produced: int = 0
    first_token_at: float | None = None

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.params.seed)
        self.stopper = StopMatcher(self.params.stop)
        # a plain buffer + one waiter: cheaper than asyncio.Queue, and a consumer that falls
        # behind drains several events per wake-up
        self._buf: deque[Event] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._stops = bool(self.stopper.stops)
        self._max = self.params.max_tokens
        self.wants_logprobs = self.params.logprobs is not None

    def _push(self, ev: Event) -> None:
        self._buf.append(ev)
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def cancel(self) -> None:
        """The consumer went away: the scheduler drops the stream before its next step."""
        self.cancelled = True

    def on_token(self, token: int, logprob: dict[str, object] | None) -> bool:
        """Record a sampled token; return True when the stream is finished."""
        self.produced += 1
        text = self.decode(token)
        finished = self.produced >= self._max
        if self._stops:
            text = self.stopper.push(text)
            if self.stopper.matched is not None:
                finished = True
            elif finished:
                text += self.stopper.flush()
        if text or logprob is not None:
            self._push(TokenEvent(text, token, self.produced - 1, logprob))
        return finished

    def finish(self, logits: np.ndarray, states: list[np.ndarray]) -> None:
        reason = "stop" if self.stopper.matched is not None else "length"
        self._push(DoneEvent(reason, self.produced, logits, states, self.stopper.matched))

    def fail(self, error: BaseException) -> None:
        self._push(ErrorEvent(error))

    async def iter_events(self) -> AsyncIterator[Event]:
        while True:
            while self._buf:
                ev = self._buf.popleft()
                yield ev
                if not isinstance(ev, TokenEvent):
                    return
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
