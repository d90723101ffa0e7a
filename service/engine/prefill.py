"""Prefill work: a queued job, the chunks of it one pass runs, and the length buckets and padded
arrays a pass becomes.

A job longer than a chunk runs in several passes (chunked prefill): each pass runs the next
`chunk_tokens` of it from the state the last one left, and the engine thread decodes and takes
up newer jobs in between, so one long request delays others by a pass, not by its whole length.
The recurrence makes this exact: running tokens [0, a) then [a, n) from the state after a is
the same computation as running [0, n) at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import numpy as np

StateRows = list[np.ndarray]
PrefillResult = tuple[np.ndarray, StateRows]


@dataclass(eq=False)
class PrefillJob:
    tokens: np.ndarray  # int64 (T,), T >= 1
    states: StateRows | None  # one row each; None = a fresh state
    future: asyncio.Future[PrefillResult]
    enqueued: float = field(default_factory=time.perf_counter)
    done: int = 0  # tokens already run (by earlier passes, from `states` on)

    @property
    def remaining(self) -> int:
        return self.tokens.size - self.done


@dataclass(eq=False)
class Chunk:
    """The part of `job` one pass runs: `tokens` from `states` (the job's, as the last pass
    left them)."""

    job: PrefillJob
    tokens: np.ndarray  # int64 (t,), 1 <= t <= job.remaining
    states: StateRows | None

    @property
    def last(self) -> bool:
        """Whether this chunk finishes its job."""
        return self.job.done + self.tokens.size == self.job.tokens.size


class Rows(Protocol):
    @property
    def tokens(self) -> np.ndarray: ...
    @property
    def states(self) -> StateRows | None: ...


R = TypeVar("R", bound=Rows)


def take_pass(
    queue: deque[PrefillJob], max_rows: int, chunk_tokens: int, budget_tokens: int
) -> list[Chunk]:
    """Take the next pass's chunks from `queue`: at most `max_rows` jobs, each for at most
    `chunk_tokens` tokens, about `budget_tokens` in all. Short jobs (what is left of them fits
    one chunk) go first, in arrival order, then chunks of long ones in arrival order (a long
    job that ran goes back to the end): a short request waits behind at most one pass, however
    many long ones are queued, and at least one long chunk goes whenever one waits, so short
    work never starves them. A job whose caller is gone (its future done: cancelled or timed
    out) is dropped, whether it had started or not. Call under the queue's lock."""
    short: list[PrefillJob] = []
    long: list[PrefillJob] = []
    for j in queue:
        if not j.future.done():
            (short if j.remaining <= chunk_tokens else long).append(j)
    out: list[Chunk] = []
    used = 0
    for j in short:
        if len(out) == max_rows or (out and used + j.remaining > budget_tokens):
            break
        out.append(Chunk(j, j.tokens[j.done :], j.states))
        used += j.remaining
    for i, j in enumerate(long):
        room = budget_tokens - used
        if len(out) == max_rows and i > 0:
            break
        if i > 0 and room <= 0:
            break
        n = chunk_tokens if i == 0 else min(chunk_tokens, room)
        if len(out) == max_rows:  # the one long chunk every pass makes room for
            out.pop()
        out.append(Chunk(j, j.tokens[j.done : j.done + n], j.states))
        used += n
    taken = {id(c.job) for c in out}
    rest = [j for j in queue if id(j) not in taken and not j.future.done()]
    queue.clear()
    queue.extend(rest)
    return out


# A job joins a bucket when at most SPREAD x its shortest + SLACK tokens long. A padded step
# costs as much as a real one, and a call has a fixed cost: on IMDB reviews (275 tokens on
# average) in batches of 16-32, 1.5x + 16 spent 10-14 % less onnxruntime time per review than
# 2x + 16, and tighter (1.25x, 1.1x) made more calls than it saved padding (docs/benchmarks.md).
SPREAD, SLACK = 1.5, 16


def length_buckets(jobs: list[R], max_batch_tokens: int) -> list[list[R]]:
    """Group by length so short rows are not padded to a long one: a job joins a bucket when at
    most `SPREAD` x its shortest + `SLACK`, within `max_batch_tokens`."""
    jobs.sort(key=lambda j: j.tokens.size)
    out: list[list[R]] = []
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
    jobs: Sequence[Rows], init_row: StateRows, axes: list[int]
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
