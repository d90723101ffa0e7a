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
from typing import TYPE_CHECKING, Protocol, TypeVar

import numpy as np

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

StateRows = list[np.ndarray]
PrefillResult = tuple[np.ndarray, StateRows]


@dataclass(eq=False)
class PrefillJob:
    tokens: np.ndarray  # int64 (T,), T >= 1
    states: StateRows | None  # one row each; None = a fresh state
    future: asyncio.Future[PrefillResult]
    enqueued: float = field(default_factory=time.perf_counter)
    done: int = 0  # tokens already run (by earlier passes, from `states` on)
    # (its request's trace context, when queued, ns since the epoch): a sampled request's job
    # (service/tracing.py); the engine thread records its queue wait and batches under it
    trace: tuple[SpanContext, int] | None = None

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


MIN_LONG_CHUNK = 64  # the least of a long job a pass runs when several share its budget


class PrefillQueue:
    """The waiting prefill jobs: short ones (the whole job fits one chunk as it arrives) in
    arrival order, and long ones, which run a chunk a pass, round robin. A pass takes short
    jobs first, then long chunks, and at least one long chunk whenever one waits: a short
    request waits behind at most one pass however many long ones are queued, and short work
    never starves long work. Used under the scheduler's lock."""

    def __init__(self) -> None:
        self.short: deque[PrefillJob] = deque()
        self.long: deque[PrefillJob] = deque()
        self._long_ran = False  # whether the last pass ran a long chunk

    def __len__(self) -> int:
        return len(self.short) + len(self.long)

    def add(self, job: PrefillJob, chunk_tokens: int) -> None:
        (self.short if job.remaining <= chunk_tokens else self.long).append(job)

    def oldest(self) -> float:
        """When the longest-waiting job was queued (the queue is not empty)."""
        return min(q[0].enqueued for q in (self.short, self.long) if q)

    def put_back(self, jobs: list[PrefillJob]) -> None:
        """Long jobs a pass ran a chunk of, behind every long job still waiting."""
        self.long.extend(jobs)

    def drain(self) -> list[PrefillJob]:
        jobs = [*self.short, *self.long]
        self.short.clear()
        self.long.clear()
        return jobs

    def take(self, max_rows: int, chunk_tokens: int, budget_tokens: int) -> list[Chunk]:
        """The next pass: at most `max_rows` jobs, about `budget_tokens` tokens, a long job's
        chunk at most `chunk_tokens`. A job whose caller is gone (its future done: cancelled
        or timed out) is dropped, whether it had started or not."""
        out: list[Chunk] = []
        used = 0
        short = self.short
        while short and len(out) < max_rows:
            j = short[0]
            if j.future.done():
                short.popleft()
                continue
            if out and used + j.remaining > budget_tokens:
                break
            short.popleft()
            out.append(Chunk(j, j.tokens[j.done :], j.states))
            used += j.remaining
        long = self.long
        # the budget left is shared by the long jobs waiting (a batched row costs less than a
        # lone one), a chunk each of at least MIN_LONG_CHUNK
        share = (budget_tokens - used) // max(1, min(len(long), max_rows - len(out)))
        chunk_tokens = min(chunk_tokens, max(MIN_LONG_CHUNK, share))
        first = True
        while long:
            j = long[0]
            if j.future.done():
                long.popleft()
                continue
            room = min(chunk_tokens, budget_tokens - used)
            if not first and (room <= 0 or len(out) >= max_rows):
                break
            if len(out) >= max_rows:
                # the long chunk a pass makes room for; with a single row, every other pass,
                # so neither kind waits on the other for more than a pass
                if max_rows == 1 and self._long_ran:
                    break
                back = out.pop()
                short.appendleft(back.job)
                used -= back.tokens.size
            n = min(j.remaining, chunk_tokens if first else room)
            long.popleft()
            out.append(Chunk(j, j.tokens[j.done : j.done + n], j.states))
            used += n
            first = False
        self._long_ran = not first
        return out


# A job joins a bucket when at most SPREAD x its shortest + SLACK tokens long. A padded step
# costs as much as a real one, and a call has a fixed cost: on IMDB reviews (275 tokens on
# average) in batches of 16-32, 1.5x + 16 spent 10-14 % less onnxruntime time per review than
# 2x + 16, and tighter (1.25x, 1.1x) made more calls than it saved padding (docs/benchmarks.md).
SPREAD, SLACK = 1.5, 16


def length_buckets(jobs: list[R], max_batch_tokens: int) -> list[list[R]]:
    """Group by length so short rows are not padded to a long one: a job joins a bucket when at
    most `SPREAD` x its shortest + `SLACK`, within `max_batch_tokens`."""
    sizes = [j.tokens.size for j in jobs]
    if sizes and min(sizes) == max(sizes) and sizes[0] * len(jobs) <= max_batch_tokens:
        return [jobs]  # (every row the same length, as a batch of one-character feeds: one call)
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
    sizes = [j.tokens.size for j in jobs]
    B, T = len(jobs), max(sizes)
    if min(sizes) == T:  # no padding: one copy (a batch of one-character feeds)
        tokens = np.stack([j.tokens for j in jobs])
    else:
        tokens = np.zeros((B, T), np.int64)
        for i, j in enumerate(jobs):
            tokens[i, : j.tokens.size] = j.tokens
    lengths = np.array(sizes, np.int32)
    states = [
        np.concatenate([(j.states or init_row)[k] for j in jobs], axis=ax)
        for k, ax in enumerate(axes)
    ]
    return tokens, lengths, states
