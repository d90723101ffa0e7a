"""SSE framing (`service/api/streaming.py`) and event batching (`Stream.iter_batches`)."""

from __future__ import annotations

import asyncio

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from service.api.streaming import _frame, token_frame, token_payload
from service.engine.sampling import SamplingParams
from service.engine.stream import DoneEvent, Stream
from service.protocol.events import TokenEvent
from service.protocol.messages import Alternative, StepLogprob


@given(st.text(), st.integers(0, 10**6), st.integers(0, 10**6))
def test_token_frame_is_the_generic_frame_byte_for_byte(text: str, index: int, tok: int) -> None:
    ev = TokenEvent(text, tok, index)
    assert token_frame(ev) == _frame("token", token_payload(ev))


def test_token_frame_with_logprobs_keeps_them() -> None:
    ev = TokenEvent("a", 1, 0, StepLogprob(-0.5, (Alternative("a", -0.5),)))
    assert token_frame(ev) == _frame("token", token_payload(ev))
    assert '"logprob": {"logprob": -0.5, "top": [{"token": "a", "logprob": -0.5}]}' in token_frame(
        ev
    )


def _stream() -> Stream:
    p = SamplingParams(1.0, 0, 1.0, seed=0, max_tokens=10)
    return Stream(p, np.zeros(4, np.float32), [np.zeros((1, 1, 2), np.float32)], "abcd".__getitem__)


async def test_a_consumer_that_fell_behind_gets_every_ready_event_at_once() -> None:
    s = _stream()
    batches: list[list[str]] = []

    async def consume() -> None:
        async for b in s.iter_batches():
            batches.append([type(ev).__name__ for ev in b])

    task = asyncio.ensure_future(consume())
    await asyncio.sleep(0)
    s.emit(0, None, None)
    await asyncio.sleep(0)  # the consumer takes the one token
    for tok in (1, 2, 3):  # three tokens before it runs again
        s.emit(tok, None, None)
    s.finish(np.zeros(4, np.float32), [np.zeros((1, 1, 2), np.float32)], s.produced, None)
    await asyncio.wait_for(task, 1)
    assert batches == [["TokenEvent"], ["TokenEvent"] * 3 + ["DoneEvent"]]
    assert s.produced == 4


async def test_events_after_the_terminal_one_are_never_delivered() -> None:
    s = _stream()
    s.emit(0, None, None)
    s.fail(RuntimeError("boom"))
    s.emit(1, None, None)  # a late token (cannot happen, but must not leak)
    evs = [ev async for ev in s.iter_events()]
    assert [type(e).__name__ for e in evs] == ["TokenEvent", "ErrorEvent"]
    assert not any(isinstance(e, DoneEvent) for e in evs)
