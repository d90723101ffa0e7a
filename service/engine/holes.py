"""Rows leaving a batch array without copying the batch: the kept rows past the new end move
into the holes the leaving rows left, and the array is cut to the new end (a view).

At 4,096 streams with 200 tokens each, ~20 rows leave at every decode step; gathering the kept
rows into new arrays (`a[idx]`) copied the whole batch's logits, draws and state at each step,
a tenth of the engine thread's time (py-spy, docs/benchmarks.md). Moving rows changes the
batch's row order, which nothing depends on: each row's tokens depend on its own logits,
parameters and draws only (sampling.py)."""

from __future__ import annotations

import numpy as np


def plan(keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """For a (n,) mask of the rows that stay: (holes, movers, m). The batch keeps m rows; row
    `holes[i]` (< m, leaving) takes row `movers[i]` (>= m, staying); the rows below m that stay
    stay where they are."""
    m = int(np.count_nonzero(keep))
    gone = np.flatnonzero(~keep[:m])  # (the holes below the new end)
    movers = np.flatnonzero(keep[m:]) + m  # (as many rows that stay above it)
    return gone, movers, m


def order(holes: np.ndarray, movers: np.ndarray, m: int) -> np.ndarray:
    """The same move as a gather: new row i is old row `order[i]` (for what cannot move rows
    in place, e.g. values on a device)."""
    idx = np.arange(m)
    idx[holes] = movers
    return idx


def fill(a: np.ndarray, holes: np.ndarray, movers: np.ndarray, m: int, axis: int = 0) -> np.ndarray:
    """`a` (writable, rows on `axis`) with the move done in place, cut to m rows (a view)."""
    v = a.swapaxes(0, axis) if axis else a
    if len(holes):
        v[holes] = v[movers]
    out = v[:m]
    return out.swapaxes(0, axis) if axis else out
