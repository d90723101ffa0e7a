"""Deterministic train / validation splits.

A seeded permutation (numpy's PCG64 via `random.Random` would also do; we use `random` so the
split needs no numpy) decides which examples are held out. The split seed is separate from the
training seed so that runs with different seeds are evaluated on the same validation set.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def random_split(items: Sequence[T], val_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """(train, val): `round(n * val_fraction)` items held out by a seeded shuffle; order kept."""
    n = len(items)
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)  # both sides non-empty
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[:n_val])
    train = [x for i, x in enumerate(items) if i not in held]
    val = [x for i, x in enumerate(items) if i in held]
    return train, val


def tail_split(text: str, val_fraction: float) -> tuple[str, str]:
    """nanoGPT's split of a character stream: the first (1 - f) for training, the rest for val."""
    cut = int(len(text) * (1.0 - val_fraction))
    return text[:cut], text[cut:]
