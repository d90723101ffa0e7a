"""Rows leaving a batch array by moving the last kept rows into the holes: the same rows as a
gather of the kept ones, each still with its own data, whatever the mask and the batch axis."""

from __future__ import annotations

import numpy as np
import pytest

from service.engine.holes import fill, order, plan


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("seed", range(30))
def test_moving_rows_into_the_holes_keeps_exactly_the_rows_that_stay(axis: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    keep = rng.random(n) < rng.random()  # from nearly none to nearly all rows staying
    a = rng.random((3, n, 4)) if axis == 1 else rng.random((n, 5))
    before = a.copy()
    holes, movers, m = plan(keep)
    assert m == keep.sum() and len(holes) == len(movers)
    assert (holes < m).all() and (movers >= m).all()
    idx = order(holes, movers, m)
    out = fill(a, holes, movers, m, axis)
    assert np.array_equal(out, np.take(before, idx, axis=axis))
    # the same rows as the gather of the kept ones, in another order
    assert sorted(idx.tolist()) == np.flatnonzero(keep).tolist()


def test_nothing_moves_when_only_the_last_rows_leave() -> None:
    keep = np.array([True, True, True, False, False])
    holes, movers, m = plan(keep)
    assert m == 3 and holes.size == 0 and movers.size == 0
    a = np.arange(5.0)
    out = fill(a, holes, movers, m)
    assert out.base is a and out.tolist() == [0, 1, 2]  # a view: no copy
