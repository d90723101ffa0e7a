"""Per-model scheduler: dynamic batching of prefill/predict work, continuous batching of decode.

Each model has one **engine thread** that alternates between
* a **prefill** pass: waiting jobs (predictions, session feeds, generation prompts) of any length,
  bucketed by length and run with exact variable-length semantics (`lengths`); when nothing is
  decoding, a batch waits up to `max_wait_ms` to fill up. A pass runs about `prefill_pass_ms`
  of work (its token budget follows the measured cost of a token) and at most a chunk
  (`prefill_chunk_tokens`, or the budget if less) of a long job, which waits with its state so
  far for its next chunk (`prefill.PrefillQueue`: short jobs first), so one huge request delays
  others by a pass, never by its whole length, and is dropped between chunks once its caller
  has timed out or gone;
* a **decode step** (`decode.Decoder`): every active generation stream samples one token and the whole batch
  advances by that token in ONE onnxruntime call. Streams join and leave between steps. A
  step's tokens leave as arrays: one (stream ids, tokens) pair per sink for the routed rows
  (`stream.Route`: in the engine process, a worker, which decodes them), so the engine's Python
  per step does not grow with the streams; only rows that need text here (stop strings,
  logprobs) or have no route (one process) are walked one by one.

Why a thread, not a task on the event loop: the engine never waits for the loop. HTTP runs on
the loop *while* the next step computes; a consumer that fell behind finds several tokens and
writes them with one send (docs/benchmarks.md has the A/B). Results cross back with ONE
`call_soon_threadsafe` per step or prefill bucket (`to_loop.py`): futures and stream events are
touched on the loop thread only.

The decode batch (`batch.DecodeBatch`) keeps its state as contiguous batch arrays plus per-row
parameter arrays (`rows.Rows`): a step's sampling, draws and length checks are a few numpy
calls. A failed call fails every waiter of that call.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from service import tracing
from service.engine.decode import Decoder
from service.engine.pass_budget import PassBudget
from service.engine.prefill import (
    Chunk,
    PrefillJob,
    PrefillQueue,
    PrefillResult,
    StateRows,
)
from service.engine.prefill_pass import PrefillPass
from service.engine.runner import Runner
from service.engine.state_place import StateOnDevice, place_for
from service.engine.stream import Stream
from service.engine.to_loop import Meters, fail_streams, reject
from service.errors import EngineError, Overloaded, ServiceError
from service.logging import get_logger
from service.metrics import Metrics

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

log = get_logger("scheduler")


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch_size: int = 64
    max_wait_ms: float = 2.0
    max_queue: int = 1024
    max_streams: int = 256
    max_batch_tokens: int = 1 << 16
    prefill_chunk_tokens: int = 4096  # most tokens of one job in one pass (or the pass budget)
    prefill_pass_ms: float = 50.0  # a pass's work, from the measured cost a token (0: no bound)
    max_request_tokens: int = 1_000_000  # tokens one predict request may bring (all its rows)
    stall_timeout_s: float = 10.0  # work waiting and the engine thread not moving: not ready
    stream_buffer_bytes: int = 512 << 10  # a stream's unread backlog (see Stream.max_backlog_bytes)
    state_on_device: StateOnDevice = "auto"  # where the decode batch's state lives (state_place)


def _shutting_down() -> Overloaded:
    return Overloaded("the server is shutting down", code="shutting_down")


class Scheduler:
    """Create inside the running loop (`start()` captures it and starts the engine thread)."""

    def __init__(
        self,
        runner: Runner,
        config: SchedulerConfig,
        metrics: Metrics | None = None,
        name: str | None = None,
    ):
        self.runner = runner
        self.config = config
        self.metrics = metrics
        self.name = name or runner.manifest.name  # its metrics' `model` label and thread name
        self._m = Meters(metrics, self.name) if metrics is not None else None
        self._gauged = (-1, -1)  # (queue depth, active streams) last set
        # shared with the event loop, guarded by _cv
        self._cv = threading.Condition()
        self._prefill = PrefillQueue()
        self._joining: deque[Stream] = deque()
        self._closing = False
        self._abort = False
        place = place_for(runner, config.state_on_device)
        # the decode half of the engine thread: the batch of live streams and its step
        self.decoder = Decoder(
            runner,
            place,
            config.max_streams,
            self._cv,
            self._joining,
            self._post,
            self._m,
            self._gauge,
            self.name,
        )
        self.counts = self.decoder.counts  # decode steps and rows so far (traced streams)
        self._last_rows = 2  # jobs in the last prefill batch (start by waiting)
        self._budget = PassBudget(
            config.prefill_pass_ms, config.max_batch_tokens, config.prefill_chunk_tokens
        )
        self._pass = PrefillPass(runner, self._budget, config.max_batch_tokens, self._post, self._m)
        self._beat = time.monotonic()  # the engine thread's last sign of life (see stalled_s)
        self._waiting = False  # the engine thread is waiting for work (not stalled, whatever beat)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name=f"engine-{self.name}", daemon=True)

    # -- public API (event loop) ------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread.start()

    async def prefill(
        self, tokens: Sequence[int] | np.ndarray, states: StateRows | None = None
    ) -> PrefillResult:
        """Run `tokens` from `states` (one row each); returns (logits (K,), new state rows)."""
        (fut,) = self.submit([(tokens, states)])
        return await fut

    def submit(
        self,
        work: Sequence[tuple[Sequence[int] | np.ndarray, StateRows | None]],
        traces: Sequence[SpanContext | None] | None = None,
    ) -> list[asyncio.Future[PrefillResult]]:
        """Queue each (tokens, state rows) as a prefill job with ONE wake-up of the engine
        thread (a batch of session feeds read from the wire together); each future holds its
        job's result, or the refusal (`Overloaded` past `max_queue`) of that job alone.
        `traces`: each job's parent span (tracing on: a batch's sampled feeds), else the
        current span's."""
        loop = asyncio.get_running_loop()
        jobs, futures = [], []
        now = time.perf_counter()
        for k, (tokens, states) in enumerate(work):
            arr = np.asarray(tokens, dtype=np.int64)
            assert arr.ndim == 1 and arr.size >= 1, "prefill needs at least one token"
            fut: asyncio.Future[PrefillResult] = loop.create_future()
            job = PrefillJob(arr, states, fut, now)
            if (
                tracing.enabled
                and (ctx := traces[k] if traces is not None else tracing.capture()) is not None
            ):
                job.trace = (ctx, tracing.now_ns())
            jobs.append(job)
            futures.append(fut)
        chunk = self._budget.chunk()
        with self._cv:
            depth = len(self._prefill)
            for job in jobs:
                try:
                    self._admit(depth)
                except ServiceError as e:
                    job.future.set_exception(e)
                    continue
                self._prefill.add(job, chunk)
                depth += 1
            self._cv.notify()
        # (the gauges are the engine thread's to set, as it takes the work: setting them here
        # too cost two gauge writes on the loop for every feed batch and every stream)
        return futures

    def join(self, stream: Stream) -> None:
        """Add a generation stream; it advances from the next decode step on."""
        (refused,) = self.join_many([stream])
        if refused is not None:
            raise refused

    def join_many(self, streams: Sequence[Stream]) -> list[ServiceError | None]:
        """Add several streams with ONE wake-up of the engine thread (the generations one
        worker asked for together); each one's refusal (`Overloaded` past `max_queue`
        joining, or shutting down), or None where it joined."""
        out: list[ServiceError | None] = []
        with self._cv:
            for stream in streams:
                try:
                    self._admit(len(self._joining))
                except ServiceError as e:
                    out.append(e)
                    continue
                self._joining.append(stream)
                out.append(None)
            self._cv.notify()
        return out

    @property
    def active_streams(self) -> int:
        return len(self.decoder.batch) + len(self._joining)

    def stalled_s(self) -> float | None:
        """How long the engine thread has held work without moving (no call returned, no wait
        begun), or None when it is idle or moving. A stuck onnxruntime call, or a thread that
        died without failing its work, reads as stalled; a server that stops stepping must not
        read as ready (vllm-project/vllm #53130)."""
        if self._waiting and self._thread.is_alive():
            return None
        return time.monotonic() - self._beat

    @property
    def queue_depth(self) -> int:
        return len(self._prefill)

    async def close(self, timeout: float) -> None:
        """Stop accepting work, let in-flight work finish for up to `timeout`, then fail it."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        if self._thread.is_alive() and not await self._joined(timeout):
            with self._cv:
                self._abort = True  # the thread fails what it holds at its next iteration
                self._cv.notify()
            await self._joined(1.0)
        # whatever is still queued (or held by a thread stuck in a call) fails now
        err = _shutting_down()
        with self._cv:
            jobs = self._prefill.drain()
            joining = list(self._joining)
            self._joining.clear()
        reject([j.future for j in jobs], err)
        fail_streams(joining, err)
        if self._thread.is_alive():
            fail_streams(self.decoder.batch.streams, err)

    def release(self) -> None:
        """After `close`: let go of the model (an unloaded version's graph and its memory). The
        scheduler refers to itself through its parts' callbacks, and a scheduler made at
        start-up was frozen out of the collector (`heap.py`): a cycle that holds the onnxruntime
        session would never be freed, so the links to the model are cut here."""
        if self._thread.is_alive():  # a thread stuck in a call still uses them
            return
        del self._pass, self.decoder, self.runner

    async def _joined(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._thread.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        return not self._thread.is_alive()

    def _admit(self, depth: int) -> None:
        if self._closing:
            raise _shutting_down()
        if depth >= self.config.max_queue:
            raise Overloaded(f"model {self.name!r} queue is full ({self.config.max_queue})")

    # -- the engine thread ------------------------------------------------------------------

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        """Run `fn(*args)` on the event loop (in submission order)."""
        assert self._loop is not None
        # (an eventfd FIFO that wakes the loop only when it is not already due to drain was
        # tried: 4 us less per step in-process, but first tokens at 256 streams came 1.7x later
        # on uvloop: docs/benchmarks.md)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(fn, *args)

    def _run(self) -> None:
        while True:
            self._beat = time.monotonic()
            try:
                chunks = self._next_jobs()
                if chunks is None:
                    return
                if chunks:
                    self._pass.run(chunks, self._put_back)
                if self.decoder.busy:
                    self.decoder.step()
            except Exception as e:  # a bug here must not leave waiters hanging forever
                log.exception("scheduler error", extra={"model": self.name})
                self._fail_all(EngineError(f"scheduler error: {e}"))

    def _next_jobs(self) -> list[Chunk] | None:
        """Block until there is work; return the prefill chunks to run now (maybe none, when
        only decoding), or None when the thread should exit."""
        cfg = self.config
        with self._cv:
            while True:
                if self._abort:
                    self._fail_all(_shutting_down())
                    return None
                decoding = self.decoder.busy
                if not (self._prefill or decoding):
                    if self._closing:
                        return None
                    self._waiting = True
                    self._cv.wait()
                    self._waiting, self._beat = False, time.monotonic()
                    continue
                if self._prefill and not decoding and not self._closing:
                    # wait for company only when requests have been arriving together: a lone
                    # client pays no batching delay, concurrent ones fill batches. A batch goes
                    # as soon as it is as large as the last one: waiting on for rows that are
                    # still on their way through HTTP made every step of 32 clients wait the
                    # whole `max_wait_ms` (docs/benchmarks.md: 1.3x session step req/s)
                    wait = self._prefill.oldest() + cfg.max_wait_ms / 1000 - time.perf_counter()
                    enough = min(cfg.max_batch_size, self._last_rows)
                    if wait > 0 and self._last_rows > 1 and len(self._prefill) < enough:
                        self._waiting = True
                        self._cv.wait(wait)
                        self._waiting, self._beat = False, time.monotonic()
                        continue
                break
            # a cancelled caller's job is skipped, also between the chunks of a long one
            jobs = self._prefill.take(
                cfg.max_batch_size, self._budget.chunk(), self._budget.tokens()
            )
        if jobs:
            self._last_rows = len(jobs)
        self._gauge()
        return jobs

    def _gauge(self) -> None:
        now = (len(self._prefill), self.active_streams)
        if self._m is not None and now != self._gauged:  # most steps change neither
            self._gauged = now
            self._m.queue_depth.set(now[0])
            self._m.active_streams.set(now[1])

    def _put_back(self, jobs: list[PrefillJob]) -> None:
        with self._cv:  # behind the long jobs still waiting
            self._prefill.put_back(jobs)

    def _fail_all(self, err: ServiceError) -> None:
        with self._cv:
            jobs = self._prefill.drain()
            joining = list(self._joining)
            self._joining.clear()
        self._post(reject, [j.future for j in jobs], err)
        self._post(fail_streams, [*self.decoder.batch.streams, *joining], err)
        self.decoder.clear()
