"""The scheduler against a fake runner at the seam (no onnxruntime)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.engine.stream import DoneEvent
from service.errors import EngineError, InvalidState, Overloaded
from tests.service.engine.fake_runner import FakeRunner, drain, make, new_stream


async def test_prefill_batches_concurrent_jobs_exactly() -> None:
    runner = FakeRunner()
    s = make(runner, max_batch_size=8)
    jobs = [[i + 1] * (i % 5 + 1) for i in range(16)]
    results = await asyncio.gather(*(s.prefill(j) for j in jobs))
    for j, (_, rows) in zip(jobs, results, strict=True):
        assert rows[0].shape == (1, 1, 32)
        assert rows[0][0, 0, 0] == sum(j)  # exact: padding ignored
    assert len(runner.calls) < len(jobs)  # batched
    assert max(b for b, _ in runner.calls) <= 8
    await s.close(1)


async def test_a_job_whose_outputs_are_not_finite_is_refused_and_its_batch_mate_is_not() -> None:
    """The pass's outputs are checked once for the batch, then row by row when one is bad: the
    row that went non-finite is refused naming its tensor, the other gets exactly its result."""
    runner = FakeRunner()
    runner.gate.clear()
    s = make(runner, max_batch_size=8)
    first = asyncio.ensure_future(s.prefill([1]))  # holds the engine thread in its call ...
    await asyncio.to_thread(runner.entered.wait, 5)
    bad = [np.full((1, 1, 32), np.nan, np.float32)]
    clean = asyncio.ensure_future(s.prefill([2, 3]))  # ... so these two share the next pass
    poisoned = asyncio.ensure_future(s.prefill([4], bad))
    async with asyncio.timeout(5):  # both queued: the next pass takes whatever waits
        while len(s._prefill) < 2:
            await asyncio.sleep(0.001)
    runner.gate.set()
    await first
    _, rows = await clean
    assert rows[0][0, 0, 0] == 5
    with pytest.raises(InvalidState, match="tensor 'h' became non-finite") as e:
        await poisoned
    assert e.value.field == "state"
    assert (2, 2) in runner.calls  # one pass ran both
    await s.close(1)


async def test_buckets_limit_padding() -> None:
    runner = FakeRunner()
    runner.gate.clear()
    s = make(runner, max_batch_size=64)
    blocker = asyncio.ensure_future(s.prefill([1]))
    await asyncio.sleep(0.02)  # the loop is now stuck in the first call
    short = [s.prefill([1, 2]) for _ in range(4)]
    long = [s.prefill([1] * 500) for _ in range(4)]
    runner.gate.set()
    await asyncio.gather(blocker, *short, *long)
    assert (4, 2) in runner.calls and (4, 500) in runner.calls
    await s.close(1)


async def test_a_long_job_runs_in_chunks_exactly_and_lets_a_short_one_pass() -> None:
    runner = FakeRunner()
    s = make(runner, prefill_chunk_tokens=100)
    runner.gate.clear()
    long = asyncio.ensure_future(s.prefill(list(range(1, 1001))))  # 10 chunks
    await asyncio.to_thread(runner.entered.wait, 5)  # stuck in the long job's first chunk
    short = asyncio.ensure_future(s.prefill([7, 7]))
    while s.queue_depth < 1:  # queued while the first chunk runs
        await asyncio.sleep(0)
    runner.gate.set()
    _, rows = await short
    assert rows[0][0, 0, 0] == 14
    _, rows = await long
    assert rows[0][0, 0, 0] == sum(range(1, 1001))  # exact: each chunk from the last's state
    assert runner.calls.count((1, 100)) == 10 and runner.calls.index((1, 2)) == 1
    await s.close(1)


async def test_a_cancelled_long_job_stops_at_its_next_chunk() -> None:
    runner = FakeRunner()
    s = make(runner, prefill_chunk_tokens=10)
    runner.gate.clear()
    long = asyncio.ensure_future(s.prefill([1] * 1000))  # 100 chunks
    await asyncio.to_thread(runner.entered.wait, 5)  # in its first chunk
    long.cancel()  # (a request timed out, or its client left)
    await asyncio.sleep(0)
    runner.gate.set()
    _, rows = await s.prefill([3])  # the engine is free again, after at most one more chunk
    assert rows[0][0, 0, 0] == 3
    assert runner.calls.count((1, 10)) <= 2
    await s.close(1)


async def test_a_pass_is_bounded_by_its_measured_time() -> None:
    runner = FakeRunner()
    s = make(runner, prefill_chunk_tokens=64, prefill_pass_ms=1000.0, max_batch_tokens=1 << 16)
    assert s._budget.tokens() == 2048  # nothing measured yet: a guess
    s._budget.token_s = 0.001  # 1 ms a token: a 1 s pass is 1,000 tokens
    assert s._budget.tokens() == 1000
    assert s._budget.chunk() == 64
    s._budget.token_s = 0.1  # a chunk shrinks to what a pass's budget allows
    assert s._budget.tokens() == 10 and s._budget.chunk() == 10
    await s.close(1)


async def test_failed_batch_fails_every_waiter_and_recovers() -> None:
    runner = FakeRunner()
    runner.fail = True
    s = make(runner)
    results = await asyncio.gather(*(s.prefill([1, 2]) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, EngineError) for r in results)
    runner.fail = False
    _, rows = await s.prefill([3])
    assert rows[0][0, 0, 0] == 3
    await s.close(1)


async def test_bounded_queue_and_shutdown() -> None:
    runner = FakeRunner()
    runner.gate.clear()
    s = make(runner, max_queue=2)
    first = asyncio.ensure_future(s.prefill([1]))
    await asyncio.sleep(0.02)
    queued = [asyncio.ensure_future(s.prefill([1])) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(Overloaded) as e:
        await s.prefill([1])
    assert e.value.headers["Retry-After"]
    runner.gate.set()
    await asyncio.gather(first, *queued)
    await s.close(1)
    with pytest.raises(Overloaded, match="shutting down"):
        await s.prefill([1])


async def test_submit_queues_jobs_together_and_refuses_only_those_past_the_queue() -> None:
    runner = FakeRunner()
    runner.gate.clear()
    s = make(runner, max_queue=2)
    first = asyncio.ensure_future(s.prefill([1]))
    assert await asyncio.to_thread(runner.entered.wait, 5)  # running: the queue is empty again
    futures = s.submit([([1], None), ([2, 3], None), ([4], None)])
    assert not futures[0].done() and not futures[1].done()
    with pytest.raises(Overloaded):
        await futures[2]
    runner.gate.set()
    (a_logits, _), (b_logits, _) = [await f for f in futures[:2]]
    assert a_logits.shape == b_logits.shape
    await first
    await s.close(1)


async def test_join_many_joins_together_refusing_only_those_past_the_queue() -> None:
    """Streams joining with one wake-up (`join_many`, the host's batched opens): each one past
    `max_queue` waiting to join is refused on its own; a stream that keeps no final state ends
    without one, the others with theirs."""
    runner = FakeRunner()
    runner.gate.clear()
    s = make(runner, max_queue=2)
    busy = asyncio.ensure_future(s.prefill([1]))
    assert await asyncio.to_thread(runner.entered.wait, 5)  # the engine thread is in a call
    streams = [new_stream(runner, max_tokens=3) for _ in range(3)]
    streams[0].keep_final = False
    refusals = s.join_many(streams)
    assert refusals[:2] == [None, None] and isinstance(refusals[2], Overloaded)
    runner.gate.set()
    await busy
    (toks0, done0), (toks1, done1) = await asyncio.gather(*(drain(st) for st in streams[:2]))
    assert isinstance(done0, DoneEvent) and isinstance(done1, DoneEvent)
    assert len(toks0) == len(toks1) == 3
    assert done0.logits is None and done0.states is None
    assert done1.logits is not None and done1.states is not None
    await s.close(1)


async def test_a_lone_client_pays_no_batching_delay() -> None:
    import time

    runner = FakeRunner()
    s = make(runner, max_wait_ms=300.0)
    await s.prefill([1])  # the first batch may wait
    t0 = time.perf_counter()
    for _ in range(5):
        await s.prefill([1])
    assert time.perf_counter() - t0 < 0.3  # no 300 ms wait per request
    await s.close(1)


async def test_a_batch_waits_for_as_many_rows_as_the_last_one_had() -> None:
    """Concurrent arrivals switch waiting on; a batch goes as soon as it is as large as the
    last, and waits (up to max_wait_ms) only for rows that have not arrived."""
    import time

    runner = FakeRunner()
    s = make(runner, max_wait_ms=300.0)
    await s.prefill([1])  # a lone client first: no waiting from here
    runner.calls.clear()
    runner.gate.clear()
    blocker = asyncio.ensure_future(s.prefill([1]))
    await asyncio.sleep(0.02)  # the engine thread is now inside the first call
    queued = [asyncio.ensure_future(s.prefill([2])) for _ in range(6)]
    await asyncio.sleep(0.02)
    runner.gate.set()
    await asyncio.gather(blocker, *queued)
    assert runner.calls == [(1, 1), (6, 1)]  # six queued behind a call: one batch

    runner.calls.clear()
    t0 = time.perf_counter()
    await asyncio.gather(*(s.prefill([3]) for _ in range(6)))
    assert runner.calls == [(6, 1)]
    assert time.perf_counter() - t0 < 0.25  # six, as last time: no 300 ms wait

    runner.calls.clear()
    t0 = time.perf_counter()
    await asyncio.gather(*(s.prefill([4]) for _ in range(3)))
    assert runner.calls == [(3, 1)]
    assert time.perf_counter() - t0 >= 0.25  # three of six: waited for company
    await s.close(1)


async def test_a_thread_stuck_in_a_call_reads_as_stalled_and_an_idle_one_does_not() -> None:
    runner = FakeRunner()
    s = make(runner)
    while s.stalled_s() is not None:  # until the thread waits for work
        await asyncio.sleep(0.001)
    runner.gate.clear()
    job = asyncio.ensure_future(s.prefill([1, 2]))
    await asyncio.to_thread(runner.entered.wait, 5)
    first = s.stalled_s()
    assert first is not None and first >= 0
    await asyncio.sleep(0.01)
    later = s.stalled_s()
    assert later is not None and later > first  # the age of its last sign of life
    runner.gate.set()
    await job
    while s.stalled_s() is not None:
        await asyncio.sleep(0.001)
    await s.close(1)


async def test_one_slow_call_moves_the_cost_estimate_at_most_threefold() -> None:
    runner = FakeRunner()
    s = make(runner, prefill_pass_ms=50.0)
    s._budget.token_s = 1e-6
    runner.gate.clear()
    job = asyncio.ensure_future(s.prefill(list(range(1, 301))))  # >= COST_SAMPLE_TOKENS
    await asyncio.to_thread(runner.entered.wait, 5)
    await asyncio.sleep(0.05)  # the call is slow: a cold start, a preempted thread
    runner.gate.set()
    await job
    assert s._budget.token_s == pytest.approx(0.7e-6 + 0.3 * 3e-6)
    await s.close(1)
