"""Whether a step's outputs may be kept: every logit finite, every state tensor finite (one that
starts infinite, a running max, may stay so; NaN never). The engine checks each prefill pass's
outputs here once for the whole batch, and a job whose row fails is refused (InvalidState,
`field: "state"`) instead of resolved: nothing non-finite reaches a session's commit, a decode
batch or a JSON encoder (service/sessions/bounds.py holds the rest of what a state may hold)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from service.contract import StateTensor


def nonfinite(
    specs: Sequence[StateTensor],
    logits: Sequence[np.ndarray | None],
    states: Sequence[np.ndarray],
) -> str | None:
    """Why these outputs may not be kept, or None. Works on one row or on a whole batch (then
    None means every row may be kept; a reason, that at least one may not)."""
    if any(x is not None and not finite(x) for x in logits):
        return "the session's state gave non-finite outputs; reset it or import another"
    for a, s in zip(states, specs, strict=True):
        if np.isnan(a).any() if math.isinf(s.init) else not finite(a):
            return f"the session's state tensor {s.name!r} became non-finite; reset it"
    return None


def finite(a: np.ndarray) -> bool:
    """Every element finite: the float64 sum of the float32/float16 elements' magnitudes is
    finite exactly when they all are (it cannot overflow; an inf or NaN anywhere makes it inf
    or NaN, and magnitudes never add +inf to -inf, which would warn), two C calls instead of
    `isfinite` and `all`'s Python wrapper."""
    if a.dtype.itemsize > 4:
        return bool(np.isfinite(a).all())
    return math.isfinite(np.add.reduce(np.abs(a), axis=None, dtype=np.float64))
