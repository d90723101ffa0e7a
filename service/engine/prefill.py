"""Prefill work: a queued job, and the length buckets and padded arrays a batch of jobs becomes."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

StateRows = list[np.ndarray]
PrefillResult = tuple[np.ndarray, StateRows]


@dataclass(eq=False)
class PrefillJob:
    tokens: np.ndarray  # int64 (T,), T >= 1
    states: StateRows | None  # one row each; None = a fresh state
    future: asyncio.Future[PrefillResult]
    enqueued: float = field(default_factory=time.perf_counter)


# A job joins a bucket when at most SPREAD x its shortest + SLACK tokens long. A padded step
# costs as much as a real one, and a call has a fixed cost: on IMDB reviews (275 tokens on
# average) in batches of 16-32, 1.5x + 16 spent 10-14 % less onnxruntime time per review than
# 2x + 16, and tighter (1.25x, 1.1x) made more calls than it saved padding (docs/benchmarks.md).
SPREAD, SLACK = 1.5, 16


def length_buckets(jobs: list[PrefillJob], max_batch_tokens: int) -> list[list[PrefillJob]]:
    """Group by length so short rows are not padded to a long one: a job joins a bucket when at
    most `SPREAD` x its shortest + `SLACK`, within `max_batch_tokens`."""
    jobs.sort(key=lambda j: j.tokens.size)
    out: list[list[PrefillJob]] = []
    for j in jobs:
        if out:
            b = out[-1]
            n = j.tokens.size
            if n <= SPREAD * b[0].tokens.size + SLACK and n * (len(b) + 1) <= max_batch_tokens:
                b.append(j)
                continue
        out.append([j])
    return out


def pack(
    jobs: list[PrefillJob], init_row: StateRows, axes: list[int]
) -> tuple[np.ndarray, np.ndarray, StateRows]:
    """(tokens (B, T) zero-padded, lengths (B,), states) for one bucket; `lengths` make the
    padding inert, and rows without a state start from `init_row`."""
    B, T = len(jobs), max(j.tokens.size for j in jobs)
    tokens = np.zeros((B, T), np.int64)
    for i, j in enumerate(jobs):
        tokens[i, : j.tokens.size] = j.tokens
    lengths = np.array([j.tokens.size for j in jobs], np.int32)
    states = [
        np.concatenate([(j.states or init_row)[k] for j in jobs], axis=ax)
        for k, ax in enumerate(axes)
    ]
    return tokens, lengths, states
