"""The decode half of a model's engine thread: the batch of live generation streams and ONE step
for all of them (`Decoder.step`), as `prefill_pass.py` is the prefill half.

A step samples every row's next token from the logits the last step left (a few numpy calls
over the batch's per-row arrays: `sampling.py`, `row_params.py`, `stops.py`), hands the tokens
to their consumers (one pair of arrays per sink: `to_loop.emit`) *before* onnxruntime computes
the next state, runs the model on (n, 1) tokens, and lets the rows that finished leave. Streams
that asked to join (the scheduler's `join_many`, under its lock) join between steps, up to
`max_streams`; a cancelled stream leaves at the next step. Owned by the engine thread; the loop
thread only counts cancels (`Stream.on_cancel`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np

from service.engine.batch import DecodeBatch
from service.engine.row_params import special_rows
from service.engine.runner import Runner
from service.engine.sampling import sample, sample_plain
from service.engine.state_place import StatePlace
from service.engine.stream import Stream
from service.engine.to_loop import Meters, as_service_error, emit, fail_streams, finish, record
from service.engine.traced import StepCount
from service.errors import EngineError
from service.logging import get_logger

log = get_logger("scheduler")

Post = Callable[..., None]  # run a callback on the event loop (`Scheduler._post`)


class Decoder:
    def __init__(
        self,
        runner: Runner,
        place: StatePlace,
        max_streams: int,
        cv: threading.Condition,
        joining: deque[Stream],
        post: Post,
        meters: Meters | None,
        gauge: Callable[[], None],
        name: str,
    ) -> None:
        self.runner = runner
        self.batch = DecodeBatch(place)  # owned by the engine thread
        # a step binds the batch's state where it lives when that is the device (the runner's
        # method is looked up at each step, not kept: tests gate `runner.run`)
        self._bound = place.on_device
        self._max_streams = max_streams
        self._ones = np.ones(max_streams, np.int32)
        # the scheduler's: streams waiting to join (appended under `cv` by the loop thread)
        self._cv, self._joining = cv, joining
        self._post, self._m, self._gauge, self.name = post, meters, gauge, name
        self.last_step: float | None = None  # start of the last step (None: no next step)
        self.counts = StepCount()  # steps and rows so far (a traced stream's batch sizes)
        self._stats: tuple[Meters, int, float, float | None] | None = None  # not yet recorded
        self._cancels = 0  # streams cancelled so far (counted by Stream.on_cancel, loop thread)
        self._cancels_seen = 0

    @property
    def busy(self) -> bool:
        """Whether there is a step to run: streams in the batch or waiting to join."""
        return bool(self.batch.streams or self._joining)

    def _admit_joins(self) -> None:
        if not self._joining:  # the usual step (a join racing this check is seen next step)
            return
        room = self._max_streams - len(self.batch)
        new: list[Stream] = []
        with self._cv:
            while self._joining and len(new) < room:
                s = self._joining.popleft()
                s.on_cancel = self._count_cancel  # before the check: no cancel goes unseen
                if not s.cancelled:
                    new.append(s)
        if not new:
            return
        try:
            self.batch.join(new)
        except Exception as e:
            log.exception("streams could not join", extra={"model": self.name, "rows": len(new)})
            self._post(fail_streams, new, EngineError(f"could not join the decode batch: {e}"))
            return
        self._gauge()

    def _keep(self, keep: np.ndarray) -> None:
        self.batch.keep(keep)
        self._gauge()

    def clear(self) -> None:
        self.batch.clear()
        self._gauge()

    def _count_cancel(self) -> None:
        self._cancels += 1  # on the loop thread; the engine thread only reads it

    def step(self) -> None:
        b = self.batch
        if self._cancels != self._cancels_seen:
            self._cancels_seen = self._cancels
            cancelled = [s.cancelled for s in b.streams]
            if any(cancelled):
                self._keep(~np.array(cancelled, bool))
        self._admit_joins()
        streams = b.streams
        n = len(streams)
        if n == 0:
            return
        t0 = time.perf_counter()
        counts = self.counts
        counts.steps += 1
        counts.rows += n
        r = b.rows
        u = b.draws.step(r.seeds, r.count)  # (n,), one draw per row
        if b.plain:  # the usual batch: temperature only, no per-step masks
            tokens = sample_plain(b.logits, r.inv_temp, u)  # (n,)
        else:
            tokens = sample(b.logits, r.temp, r.top_k, r.top_p, u)  # (n,)
        np.add(r.count, np.uint64(1), out=r.count)  # in place: the array is this batch's own
        b.until_done -= 1
        stops = b.stops if b.stops is not None and b.stops.active else None
        hits = stops.step(tokens) if stops is not None else None  # (n,) 1 + stop completed
        stopped = hits is not None and bool(hits.any())
        if b.until_done <= 0 or r.any_special or stopped:
            done = r.count >= r.max  # (n,) finished by length ...
            if hits is not None and stopped:
                done |= hits > 0  # ... or by a stop string
            texts, logprobs = special_rows(r, streams, b.logits, tokens, done)
        else:  # no row can finish at this step
            done, texts, logprobs = None, None, None
        if b.fresh:
            b.fresh = False
            self._first_tokens(streams, t0)
        # the tokens reach their consumers while onnxruntime computes the step: the routed
        # rows' as one pair of arrays per sink, the others stream by stream
        stats, self._stats = self._stats, None
        local = b.local
        self._post(
            emit,
            streams,
            local,
            tokens.tolist() if local != () else [],
            texts,
            logprobs,
            b.routed(tokens, done) if b.sinks else [],
            stats,
        )
        try:
            # (n, 1) tokens: finished rows are fed too, so their final state includes the token
            step = self.runner.run_bound if self._bound else self.runner.run
            logits, states = step(tokens[:, None], self._ones[:n], b.states)
        except Exception as e:
            log.exception("decode step failed", extra={"model": self.name, "rows": n})
            self._post(fail_streams, streams, as_service_error(e))
            if self._stats is not None:
                self._post(record, *self._stats)
                self._stats = None
            self.clear()
            return
        b.advance(logits, states)
        if done is not None and done.any():
            self._post(finish, b.finished(done, hits))
            self._keep(~done)
        if self._m is not None:  # recorded on the loop with the next step's tokens
            gap = None if self.last_step is None else t0 - self.last_step
            self._stats = (self._m, n, time.perf_counter() - t0, gap)
            if not b.streams:  # no next step: record now
                self._post(record, *self._stats)
                self._stats = None
        self.last_step = t0 if b.streams else None

    def _first_tokens(self, streams: Sequence[Stream], t0: float) -> None:
        """Time to first token, for the rows sampling their first token now (the newest)."""
        for s in reversed(streams):
            if s.first_token_at is not None:
                return
            s.first_token_at = t0
            if self._m is not None:
                self._m.ttft.observe(t0 - s.created)
