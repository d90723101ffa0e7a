"""`service/engine/prefill.py`: the queue a pass takes its chunks from, length buckets, and the
padded arrays a bucket becomes."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from service.engine.prefill import (
    MIN_LONG_CHUNK,
    SLACK,
    SPREAD,
    PrefillJob,
    PrefillQueue,
    length_buckets,
    pack,
)


def job(n: int, state: list[np.ndarray] | None = None) -> PrefillJob:
    future: Any = None  # never resolved here
    return PrefillJob(np.arange(1, n + 1, dtype=np.int64), state, future)


def sizes(buckets: list[list[PrefillJob]]) -> list[list[int]]:
    return [[j.tokens.size for j in b] for b in buckets]


def test_buckets_are_sorted_and_bounded_by_their_shortest() -> None:
    lengths = [300, 5, 40, 17, 100, 33, 260, 1, 120]
    buckets = length_buckets([job(n) for n in lengths], max_batch_tokens=10**6)
    flat = [n for b in sizes(buckets) for n in b]
    assert flat == sorted(lengths)
    for b in sizes(buckets):
        assert b[-1] <= SPREAD * b[0] + SLACK
    # and a bucket ends only where the next job would break that bound
    for prev, nxt in zip(sizes(buckets), sizes(buckets)[1:], strict=False):
        assert nxt[0] > SPREAD * prev[0] + SLACK


def test_buckets_split_at_the_token_budget() -> None:
    buckets = length_buckets([job(10) for _ in range(7)], max_batch_tokens=30)
    assert sizes(buckets) == [[10, 10, 10], [10, 10, 10], [10]]


def test_pack_pads_with_zeros_and_starts_stateless_rows_from_the_initial_state() -> None:
    init = [np.zeros((1, 1, 2), np.float32)]
    given = [np.full((1, 1, 2), 7.0, np.float32)]
    tokens, lengths, states = pack([job(2), job(4, given)], init, axes=[1])
    assert tokens.tolist() == [[1, 2, 0, 0], [1, 2, 3, 4]]
    assert lengths.tolist() == [2, 4]
    assert states[0].shape == (1, 2, 2)
    assert states[0][0, 0].tolist() == [0.0, 0.0] and states[0][0, 1].tolist() == [7.0, 7.0]


def live_job(n: int) -> PrefillJob:
    return PrefillJob(np.arange(1, n + 1, dtype=np.int64), None, asyncio.Future())


def queue(*jobs: PrefillJob, chunk: int = 512) -> PrefillQueue:
    q = PrefillQueue()
    for j in jobs:
        q.add(j, chunk)
    return q


async def test_a_pass_takes_short_jobs_first_then_a_chunk_of_a_long_one() -> None:
    q = queue(live_job(5), live_job(2000), live_job(3))
    chunks = q.take(max_rows=64, chunk_tokens=512, budget_tokens=10_000)
    assert [c.tokens.size for c in chunks] == [5, 3, 512]
    assert [c.last for c in chunks] == [True, True, False]
    assert chunks[2].tokens.tolist() == list(range(1, 513)) and not q


async def test_a_short_job_waits_behind_no_long_one() -> None:
    longs = [live_job(100_000) for _ in range(40)]
    small = live_job(4)
    q = queue(*longs, small)
    chunks = q.take(max_rows=64, chunk_tokens=512, budget_tokens=1024)
    # the small one first; the long ones share the rest, MIN_LONG_CHUNK each, batched
    assert [c.job for c in chunks] == [small, *longs[:16]]
    assert [c.tokens.size for c in chunks] == [4] + [MIN_LONG_CHUNK] * 15 + [60]
    assert list(q.long) == longs[16:]
    q.put_back(longs[:16])  # (what the engine does after the pass)
    assert list(q.long) == [*longs[16:], *longs[:16]]


async def test_a_pass_continues_a_job_where_it_stopped() -> None:
    j = live_job(1000)
    q = queue(j)
    j.done = 900
    chunks = q.take(max_rows=64, chunk_tokens=512, budget_tokens=10_000)
    assert chunks[0].tokens.tolist() == list(range(901, 1001)) and chunks[0].last


async def test_a_pass_stops_at_its_budget_but_always_makes_progress() -> None:
    q = queue(live_job(300), live_job(300), live_job(300))
    chunks = q.take(max_rows=64, chunk_tokens=512, budget_tokens=400)
    assert [c.tokens.size for c in chunks] == [300]  # short jobs are never split
    assert len(q) == 2
    alone = queue(live_job(300)).take(max_rows=64, chunk_tokens=512, budget_tokens=1)
    assert [c.tokens.size for c in alone] == [300]
    long = queue(live_job(5000)).take(max_rows=64, chunk_tokens=512, budget_tokens=1)
    assert [c.tokens.size for c in long] == [MIN_LONG_CHUNK]


async def test_short_work_never_starves_long_work() -> None:
    shorts = [live_job(10) for _ in range(5)]
    long = live_job(5000)
    q = queue(long, *shorts)
    chunks = q.take(max_rows=3, chunk_tokens=512, budget_tokens=10)
    assert [c.job for c in chunks] == [shorts[0], long]  # over budget: still one long chunk
    full = queue(long, *shorts)
    chunks = full.take(max_rows=2, chunk_tokens=512, budget_tokens=10_000)
    assert [c.job for c in chunks] == [shorts[0], long]  # rows full: one short makes room
    assert list(full.short) == shorts[1:]


async def test_a_pass_drops_jobs_whose_caller_is_gone_and_counts_rows() -> None:
    gone, gone_long = live_job(50), live_job(5000)
    gone.future.cancel()
    gone_long.future.cancel()
    q = queue(gone, gone_long, live_job(1), live_job(1), live_job(1))
    chunks = q.take(max_rows=2, chunk_tokens=512, budget_tokens=10_000)
    assert len(chunks) == 2 and gone not in [c.job for c in chunks] and len(q) == 1
    assert not q.long and q.drain() and not q


async def test_with_one_row_short_and_long_jobs_take_turns() -> None:
    long = live_job(5000)
    shorts = [live_job(3) for _ in range(4)]
    q = queue(long, *shorts)
    ran = []
    for _ in range(4):
        chunks = q.take(max_rows=1, chunk_tokens=512, budget_tokens=10_000)
        ran.append("long" if chunks[0].job is long else "short")
        if chunks[0].job is long:
            q.put_back([long])
    assert ran == ["long", "short", "long", "short"]  # neither waits behind the other
