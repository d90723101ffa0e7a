"""What outputs may be kept: on one row or a whole pass at once (the scheduler's fast path),
with a state that starts infinite (a running max) allowed to stay so, NaN never."""

from __future__ import annotations

import numpy as np

from service.contract import StateTensor
from service.engine.finite import finite, nonfinite

H = StateTensor(name="h", input="h_in", output="h_out", shape=[1, "batch", 3], batch_axis=1)
MAX = StateTensor(
    name="pool_max", input="m_in", output="m_out", shape=["batch", 3], batch_axis=0,
    init=-np.inf,
)  # fmt: skip


def test_a_whole_batch_is_fine_only_when_every_row_is() -> None:
    logits = np.zeros((4, 5), np.float32)
    h = np.zeros((1, 4, 3), np.float32)
    pool = np.full((4, 3), -np.inf, np.float32)  # a running max not yet moved: allowed
    assert nonfinite([H, MAX], [logits], [h, pool]) is None
    h[0, 2, 1] = np.inf  # one element of one row
    assert nonfinite([H, MAX], [logits], [h, pool]) == (
        "the session's state tensor 'h' became non-finite; reset it"
    )
    assert nonfinite([H, MAX], [logits[:1]], [h[:, :1], pool[:1]]) is None  # its batch mate
    pool[3, 0] = np.nan
    assert "'pool_max' became non-finite" in str(
        nonfinite([H, MAX], [None], [np.zeros_like(h), pool])
    )
    logits[1, 4] = -np.inf
    assert "gave non-finite outputs" in str(nonfinite([H, MAX], [logits, None], [h, pool]))


def test_finite_never_overflows_or_misses_one_element() -> None:
    big = np.full(1000, np.finfo(np.float32).max, np.float32)
    assert finite(big) and finite(np.full(9, np.finfo(np.float16).max, np.float16))
    for x in (np.inf, -np.inf, np.nan):
        a = np.zeros(7, np.float32)
        a[-1] = x
        assert not finite(a) and not finite(a.astype(np.float64))
