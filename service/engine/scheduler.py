"""Per-model scheduler: dynamic batching of prefill/predict work, continuous batching of decode.

One loop per model alternates between
* a **prefill** call: waiting jobs (predictions, session feeds, generation prompts) of any length,
  bucketed by length and run with exact variable-length semantics (`lengths`); when nothing is
  decoding, a batch waits up to `max_wait_ms` to fill up;
* a **decode step**: every active generation stream samples one token and the whole batch
  advances by that token in ONE runner call. Streams join and leave between steps.

The decode batch keeps its state as contiguous batch arrays (TGI-style keyed state cache): the
outputs of one step are the inputs of the next, so a steady step copies nothing; joining
concatenates rows, leaving filters them. Runner calls go to one worker thread per model.
A failed call fails every waiter of that call.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from service.engine.runner import Runner
from service.engine.sampling import logprob_info, sample
from service.engine.stream import Stream
from service.engine.worker import Worker
from service.errors import EngineError, Overloaded, ServiceError
from service.logging import get_logger
from service.metrics import Metrics

log = get_logger("scheduler")

StateRows = list[np.ndarray]


@dataclass(eq=False)
class PrefillJob:
    tokens: np.ndarray  # int64 (T,), T >= 1
    states: StateRows | None  # one row each; None = a fresh state
    future: asyncio.Future[tuple[np.ndarray, StateRows]]
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch_size: int = 64
    max_wait_ms: float = 2.0
    max_queue: int = 1024
    max_streams: int = 256
    max_batch_tokens: int = 1 << 16


class Scheduler:
    """Create inside the running loop (`start()` spawns the loop task)."""

    def __init__(self, runner: Runner, config: SchedulerConfig, metrics: Metrics | None = None):
        self.runner = runner
        self.config = config
        self.metrics = metrics
        self.name = runner.manifest.name
        self._axes = [s.batch_axis for s in runner.manifest.io.states]
        self._init_row = runner.manifest.init_states(1)
        self._prefill: deque[PrefillJob] = deque()
        self._joining: deque[Stream] = deque()
        self._streams: list[Stream] = []
        self._states: StateRows = []
        self._logits = np.zeros((0, 0), np.float32)
        self._temp, self._top_p = np.zeros(0), np.zeros(0)  # per-row sampling parameters
        self._top_k = np.zeros(0, np.int64)
        self._ones = np.ones(config.max_streams, np.int32)
        self._last_step: float | None = None  # start of the last decode step
        self._last_rows = 2  # jobs in the last prefill batch (start by waiting)
        self._wake = asyncio.Event()
        self._closing = False
        self._worker = Worker(f"ort-{self.name}")
        self._task: asyncio.Task[None] | None = None

    # -- public API -------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"sched-{self.name}")

    async def prefill(
        self, tokens: Sequence[int] | np.ndarray, states: StateRows | None = None
    ) -> tuple[np.ndarray, StateRows]:
        """Run `tokens` from `states` (one row each); returns (logits (K,), new state rows)."""
        self._admit(len(self._prefill))
        arr = np.asarray(tokens, dtype=np.int64)
        assert arr.ndim == 1 and arr.size >= 1, "prefill needs at least one token"
        fut: asyncio.Future[tuple[np.ndarray, StateRows]] = (
            asyncio.get_running_loop().create_future()
        )
        self._prefill.append(PrefillJob(arr, states, fut))
        self._wake.set()
        self._gauge()
        return await fut

    def join(self, stream: Stream) -> None:
        """Add a generation stream; it advances from the next decode step on."""
        self._admit(len(self._joining))
        self._joining.append(stream)
        self._wake.set()

    @property
    def active_streams(self) -> int:
        return len(self._streams) + len(self._joining)

    @property
    def queue_depth(self) -> int:
        return len(self._prefill)

    async def close(self, timeout: float) -> None:
        """Stop accepting work, let in-flight work finish for up to `timeout`, then fail it."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        err = Overloaded("the server is shutting down", code="shutting_down")
        self._fail_all(err)
        self._worker.close()

    # -- the loop ---------------------------------------------------------------------------

    def _admit(self, depth: int) -> None:
        if self._closing:
            raise Overloaded("the server is shutting down", code="shutting_down")
        if depth >= self.config.max_queue:
            raise Overloaded(f"model {self.name!r} queue is full ({self.config.max_queue})")

    async def _loop(self) -> None:
        while True:
            try:
                if await self._iteration():
                    return
            except Exception as e:  # a bug here must not leave waiters hanging forever
                log.exception("scheduler loop error", extra={"model": self.name})
                self._fail_all(EngineError(f"scheduler error: {e}"))

    async def _iteration(self) -> bool:
        """One pass: wait for work, or run a prefill batch and/or a decode step.
        Returns True when closing and idle."""
        cfg = self.config
        if not (self._prefill or self._streams or self._joining):
            if self._closing:
                return True
            self._wake.clear()
            await self._wake.wait()
            return False
        if self._prefill:
            wait = self._prefill[0].enqueued + cfg.max_wait_ms / 1000 - time.perf_counter()
            idle = not (self._streams or self._joining or self._closing)
            # wait for company only when requests have been arriving together: a lone client
            # pays no batching delay, concurrent ones fill batches
            if (
                wait > 0
                and idle
                and self._last_rows > 1
                and len(self._prefill) < cfg.max_batch_size
            ):
                self._wake.clear()  # a new job wakes us to re-check the batch size
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
                return False
            await self._run_prefill()
        if self._streams or self._joining:
            await self._decode_step()
        return False

    async def _call(
        self, kind: str, tokens: np.ndarray, lengths: np.ndarray, states: StateRows
    ) -> tuple[np.ndarray, StateRows]:
        t0 = time.perf_counter()
        out = await self._worker.submit(self.runner.run, tokens, lengths, states)
        if self.metrics is not None:
            self.metrics.step_time.labels(self.name, kind).observe(time.perf_counter() - t0)
            self.metrics.batch_size.labels(self.name, kind).observe(len(lengths))
        return out

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.labels(self.name).set(len(self._prefill))
            self.metrics.active_streams.labels(self.name).set(self.active_streams)

    def _buckets(self, jobs: list[PrefillJob]) -> list[list[PrefillJob]]:
        """Group by length so short rows are not padded to a long one."""
        jobs.sort(key=lambda j: j.tokens.size)
        out: list[list[PrefillJob]] = []
        for j in jobs:
            if out:
                b = out[-1]
                n = j.tokens.size
                if (
                    n <= 2 * b[0].tokens.size + 16
                    and n * (len(b) + 1) <= self.config.max_batch_tokens
                ):
                    b.append(j)
                    continue
            out.append([j])
        return out

    async def _run_prefill(self) -> None:
        jobs: list[PrefillJob] = []
        while self._prefill and len(jobs) < self.config.max_batch_size:
            j = self._prefill.popleft()
            if not j.future.done():  # a cancelled caller's job is skipped
                jobs.append(j)
        self._gauge()
        self._last_rows = len(jobs)
        for bucket in self._buckets(jobs):
            await self._prefill_bucket(bucket)

    async def _prefill_bucket(self, jobs: list[PrefillJob]) -> None:
        B, T = len(jobs), max(j.tokens.size for j in jobs)
        tokens = np.zeros((B, T), np.int64)  # (B, T), zero-padded; lengths make padding inert
        for i, j in enumerate(jobs):
            tokens[i, : j.tokens.size] = j.tokens
        lengths = np.array([j.tokens.size for j in jobs], np.int32)
        states = [
            np.concatenate([(j.states or self._init_row)[k] for j in jobs], axis=ax)
            for k, ax in enumerate(self._axes)
        ]
        try:
            logits, out = await self._call("prefill", tokens, lengths, states)
        except Exception as e:
            log.exception("prefill batch failed", extra={"model": self.name, "rows": B})
            err = e if isinstance(e, ServiceError) else EngineError(f"inference failed: {e}")
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(err)
            return
        for i, j in enumerate(jobs):
            if not j.future.done():
                rows = [np.take(s, [i], axis=ax) for s, ax in zip(out, self._axes, strict=True)]
                j.future.set_result((logits[i].copy(), rows))

    def _admit_joins(self) -> None:
        room = self.config.max_streams - len(self._streams)
        new: list[Stream] = []
        while self._joining and len(new) < room:
            s = self._joining.popleft()
            if not s.cancelled:
                new.append(s)
        if not new:
            return
        old = [self._states] if self._streams else []
        # built aside and assigned together: a stream that cannot join fails alone and the
        # running batch stays consistent
        try:
            states = [
                np.concatenate([*(p[k] for p in old), *(s.states[k] for s in new)], axis=ax)
                for k, ax in enumerate(self._axes)
            ]
            rows = np.stack([s.logits for s in new])
            p = [st.params for st in new]
            if self._streams:
                rows = np.concatenate([self._logits, rows])
            temp = np.concatenate([self._temp, [x.temperature for x in p]])
            top_k = np.concatenate([self._top_k, [x.top_k for x in p]]).astype(np.int64)
            top_p = np.concatenate([self._top_p, [x.top_p for x in p]])
        except Exception as e:
            log.exception("streams could not join", extra={"model": self.name, "rows": len(new)})
            for st in new:
                st.fail(EngineError(f"could not join the decode batch: {e}"))
            return
        self._states, self._logits = states, rows
        self._temp, self._top_k, self._top_p = temp, top_k, top_p
        self._streams += new

    def _keep(self, keep: np.ndarray) -> None:
        """Filter the decode batch to the rows where `keep` is True."""
        if keep.all():
            return
        idx = np.flatnonzero(keep)
        self._streams = [self._streams[i] for i in idx]
        self._states = [
            np.take(s, idx, axis=ax) for s, ax in zip(self._states, self._axes, strict=True)
        ]
        self._logits = self._logits[idx]
        self._temp, self._top_k, self._top_p = self._temp[idx], self._top_k[idx], self._top_p[idx]

    def _clear_batch(self) -> None:
        self._streams, self._states = [], []
        self._logits = np.zeros((0, 0), np.float32)
        self._temp, self._top_p = np.zeros(0), np.zeros(0)
        self._top_k = np.zeros(0, np.int64)

    async def _decode_step(self) -> None:
        if any(s.cancelled for s in self._streams):
            self._keep(np.array([not s.cancelled for s in self._streams], bool))
        self._admit_joins()
        streams = self._streams
        n = len(streams)
        self._gauge()
        if n == 0:
            return
        t0 = time.perf_counter()
        uniforms = np.fromiter((s.rng.random() for s in streams), np.float64, n)
        tokens = sample(self._logits, self._temp, self._top_k, self._top_p, uniforms)  # (n,)
        # (n, 1) tokens: finished rows are fed too, so their final state includes the token.
        # onnxruntime runs in the worker thread while the per-stream bookkeeping runs here.
        call = self._worker.submit(self.runner.run, tokens[:, None], self._ones[:n], self._states)
        finished: list[int] = []
        logits_in = self._logits
        for i, (s, tok) in enumerate(zip(streams, tokens.tolist(), strict=True)):
            lp = None
            if s.wants_logprobs:
                lp = logprob_info(logits_in[i], tok, s.params.logprobs or 0, s.decode)
            if s.first_token_at is None:
                s.first_token_at = t0
                if self.metrics is not None:
                    self.metrics.ttft.labels(self.name).observe(t0 - s.created)
            if s.on_token(tok, lp):
                finished.append(i)
        try:
            logits, states = await call
        except Exception as e:
            log.exception("decode step failed", extra={"model": self.name, "rows": n})
            err = e if isinstance(e, ServiceError) else EngineError(f"inference failed: {e}")
            for s in streams:
                s.fail(err)
            self._clear_batch()
            self._gauge()
            return
        self._logits, self._states = logits, states
        for r in finished:
            rows = [np.take(st, [r], axis=ax) for st, ax in zip(states, self._axes, strict=True)]
            streams[r].finish(logits[r].copy(), rows)
        if finished:
            keep = np.ones(n, bool)
            keep[finished] = False
            self._keep(keep)
        if self.metrics is not None:
            m = self.metrics
            m.step_time.labels(self.name, "decode").observe(time.perf_counter() - t0)
            m.batch_size.labels(self.name, "decode").observe(n)
            m.tokens.labels(self.name).inc(n)
            if self._last_step is not None:  # every continuing stream saw this gap
                m.itl.labels(self.name).observe(t0 - self._last_step)
        self._last_step = t0 if self._streams else None

    def _fail_all(self, err: ServiceError) -> None:
        while self._prefill:
            j = self._prefill.popleft()
            if not j.future.done():
                j.future.set_exception(err)
        for s in [*self._streams, *self._joining]:
            s.fail(err)
        self._clear_batch()
        self._joining = deque()
