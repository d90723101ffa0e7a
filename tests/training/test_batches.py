from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from training.loop_classify import bucketed_order, collate, trim_batch, truncate  # noqa: E402
from training.loop_lm import streams  # noqa: E402


def test_bucketed_order_is_a_seeded_partition_with_similar_lengths() -> None:
    lengths = np.random.default_rng(0).integers(1, 500, size=1000)
    a = bucketed_order(lengths, 32, seed=1, epoch=0)
    assert len(a) == -(-1000 // 32)
    assert sorted(np.concatenate(a).tolist()) == list(range(1000))
    assert all(
        np.array_equal(x, y) for x, y in zip(a, bucketed_order(lengths, 32, 1, 0), strict=True)
    )
    assert not all(
        np.array_equal(x, y) for x, y in zip(a, bucketed_order(lengths, 32, 1, 1), strict=True)
    )
    spread = np.mean([np.ptp(lengths[b]) for b in a if len(b) == 32])
    assert spread < 0.1 * np.ptp(lengths)  # buckets hold similar lengths


def test_truncate_keeps_end_or_start() -> None:
    assert truncate([1, 2, 3, 4], 2, "end", 9) == [3, 4]
    assert truncate([1, 2, 3, 4], 2, "start", 9) == [1, 2]
    assert truncate([], 5, "end", 9) == [9]


def test_trim_batch_equal_lengths() -> None:
    seqs = [list(range(20)), list(range(18)), list(range(30))]
    out = trim_batch(seqs, "end")
    assert {len(s) for s in out} == {16} and out[0] == list(range(4, 20))
    assert trim_batch([[1, 2, 3], [4, 5, 6, 7]], "start") == [[1, 2, 3], [4, 5, 6]]


def test_collate_pads_and_records_lengths() -> None:
    b = collate([[5, 6, 7], [8]], [1, 0], pad_id=0, pad_to=4)
    assert b.tokens.tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    assert b.lengths.tolist() == [3, 1] and b.labels.tolist() == [1, 0]


def test_streams_targets_are_the_next_character() -> None:
    data = torch.arange(23)
    x, y = streams(data, 2, offset=1)
    assert x.tolist() == [list(range(1, 11)), list(range(11, 21))]
    assert torch.equal(y, x + 1)
