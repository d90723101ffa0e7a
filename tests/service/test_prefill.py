"""`service/engine/prefill.py`: length buckets and the padded arrays a bucket becomes."""

from __future__ import annotations

from typing import Any

import numpy as np

from service.engine.prefill import SLACK, SPREAD, PrefillJob, length_buckets, pack


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
