"""The decode step (`decode.py`) through a scheduler with a fake runner at the seam: continuous
batching, streams joining and leaving between steps with exactly their `max_tokens`, a failed
step failing every stream, and a step's tokens never changed by the rows that join after it."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from service.engine.sampling import SamplingParams
from service.engine.stream import DoneEvent, ErrorEvent, Stream
from tests.service.engine.fake_runner import FakeRunner, drain, make, new_stream


async def test_decode_is_continuously_batched() -> None:
    runner = FakeRunner()
    s = make(runner, max_streams=64)
    streams = [new_stream(runner, max_tokens=3 + i % 4) for i in range(40)]
    for st in streams:
        s.join(st)
    outs = await asyncio.gather(*(drain(st) for st in streams))
    for st, (toks, done) in zip(streams, outs, strict=True):
        assert isinstance(done, DoneEvent)
        assert len(toks) == st.params.max_tokens == done.completion_tokens
        # greedy on the fake model: h accumulates tokens, so the final state is their sum
        assert done.states[0][0, 0, 0] == sum(t.token_id for t in toks)
    decode_calls = [c for c in runner.calls if c[1] == 1]
    assert len(decode_calls) == 6  # one call per step for all streams; longest stream has 6
    assert decode_calls[0] == (40, 1)
    await s.close(1)


async def test_streams_join_between_steps_and_cancelled_ones_leave() -> None:
    runner = FakeRunner()
    s = make(runner)
    # `a` runs until cancelled: the engine thread runs ahead of its consumer, so a short `a`
    # could be finished before `b` joins
    a, b = new_stream(runner, 10**6), new_stream(runner, 5)
    s.join(a)
    while a.produced < 3:
        await asyncio.sleep(0.001)
    s.join(b)
    toks, done = await drain(b)
    assert isinstance(done, DoneEvent) and len(toks) == 5
    a.cancel()
    for _ in range(200):  # the engine thread drops it at its next step
        if s.active_streams == 0:
            break
        await asyncio.sleep(0.01)
    assert s.active_streams == 0
    assert any(c == (2, 1) for c in runner.calls)
    await s.close(1)


async def test_rows_joining_and_leaving_at_any_step_each_get_exactly_max_tokens() -> None:
    """The length check runs only at steps where some row can finish (a countdown recomputed
    when rows join or leave): rows joining mid-run, alongside a stop-string row, still end at
    exactly their own max_tokens, in any order."""
    runner = FakeRunner()
    s = make(runner, max_streams=64)
    params = SamplingParams(1.0, 0, 1.0, seed=1, max_tokens=50, stop=("x",))  # never matches
    stop = Stream(params, np.zeros(58, np.float32), runner.manifest.init_states(1), str)
    streams: list[Stream] = [stop]
    s.join(stop)
    tasks = [asyncio.ensure_future(drain(stop))]
    for wave in range(6):
        for i in range(5):
            st = new_stream(runner, max_tokens=1 + (7 * wave + 3 * i) % 23)
            streams.append(st)
            s.join(st)
            tasks.append(asyncio.ensure_future(drain(st)))
        await asyncio.sleep(0.002 * wave)
    for st, (toks, done) in zip(streams, await asyncio.gather(*tasks), strict=True):
        assert isinstance(done, DoneEvent)
        assert len(toks) == done.completion_tokens == st.params.max_tokens
    await s.close(1)


async def test_decode_failure_fails_all_streams() -> None:
    runner = FakeRunner()
    s = make(runner)
    runner.fail = True
    streams = [new_stream(runner, 10) for _ in range(3)]
    for st in streams:
        s.join(st)
    outs = await asyncio.gather(*(drain(st) for st in streams))
    assert all(isinstance(done, ErrorEvent) for _, done in outs)
    await s.close(1)


async def test_rows_joining_under_load_never_change_a_handed_off_step() -> None:
    """The streams of a step are handed to the loop with its tokens; rows joining on the engine
    thread before the loop runs that callback must not change what it sees (a join once
    extended that list in place: `zip() argument 2 is shorter`, from asyncio's handler)."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, ctx: errors.append(ctx))
    runner = FakeRunner()
    s = make(runner, max_streams=512)
    streams: list[Stream] = []
    tasks = []
    for _ in range(30):  # waves of joins while the batch decodes
        for _ in range(10):
            st = new_stream(runner, max_tokens=40)
            streams.append(st)
            s.join(st)
            tasks.append(asyncio.ensure_future(drain(st)))
        await asyncio.sleep(0.001)
    for st, (toks, done) in zip(streams, await asyncio.gather(*tasks), strict=True):
        assert isinstance(done, DoneEvent) and len(toks) == st.params.max_tokens
    await s.close(1)
    loop.set_exception_handler(None)
    assert [e.get("message") for e in errors] == []
