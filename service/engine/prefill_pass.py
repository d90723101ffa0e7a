"""One prefill pass on the engine thread: the chunks the scheduler took, run in length buckets,
each bucket one onnxruntime call; the jobs they finish are resolved on the event loop (or
refused, a row whose outputs are not finite: `finite.py`), the others go on from the state
after exactly their chunk."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from service import tracing
from service.engine.finite import nonfinite
from service.engine.pass_budget import PassBudget
from service.engine.prefill import Chunk, PrefillJob, StateRows, length_buckets, pack
from service.engine.runner import Runner
from service.engine.to_loop import Meters, as_service_error, reject, resolve
from service.errors import InvalidState
from service.logging import get_logger

log = get_logger("scheduler")

Post = Callable[..., None]  # runs a callback on the event loop, in submission order


class PrefillPass:
    def __init__(
        self,
        runner: Runner,
        budget: PassBudget,
        max_batch_tokens: int,
        post: Post,
        meters: Meters | None,
    ) -> None:
        self.runner = runner
        self.name = runner.manifest.name
        self.budget = budget  # learns the cost of a token from every call
        self.max_batch_tokens = max_batch_tokens
        self.post = post
        self.meters = meters
        self._specs = runner.manifest.io.states
        self._axes = [s.batch_axis for s in self._specs]
        # the index of the axes before each state's batch axis: a row is `s[lead + (i:i+1,)]`,
        # copied (a third of `np.take`'s cost, and no row keeps the whole batch's array alive)
        self._lead = [(slice(None),) * ax for ax in self._axes]
        self._init_row = runner.manifest.init_states(1)

    def run(self, chunks: list[Chunk], put_back: Callable[[list[PrefillJob]], None]) -> None:
        """Run `chunks`; the jobs with chunks still to run go to `put_back` (in order)."""
        unfinished: list[PrefillJob] = []
        try:
            for bucket in length_buckets(chunks, self.max_batch_tokens):
                unfinished += self._bucket(bucket)
        finally:  # (also if a bug raised: the engine loop then fails whatever is queued)
            if unfinished:
                put_back(unfinished)

    def _bucket(self, chunks: list[Chunk]) -> list[PrefillJob]:
        """Run one bucket; resolve the jobs it finishes, return those it does not. Any failure
        fails every job of the bucket (none goes back)."""
        traced = [c for c in chunks if c.job.trace is not None] if tracing.enabled else None
        start_ns = tracing.now_ns() if traced else 0
        try:
            tokens, lengths, states = pack(chunks, self._init_row, self._axes)
            logits, out = self._call(tokens, lengths, states)
            if traced:
                self._trace(traced, len(chunks), start_ns)
            # the outputs checked once for the whole pass (each row only when one is not)
            suspect = nonfinite(self._specs, [logits], out) is not None
            results = []
            unfinished = []
            refused = []
            for i, c in enumerate(chunks):
                at = slice(i, i + 1)
                rows = [s[(*lead, at)].copy() for s, lead in zip(out, self._lead, strict=True)]
                if not c.last:  # (a later chunk's outputs are what is checked)
                    unfinished.append((c, rows))
                elif suspect and (why := nonfinite(self._specs, [logits[i]], rows)) is not None:
                    refused.append(
                        (c.job.future, InvalidState(f"state rejected: {why}", field="state"))
                    )
                else:
                    results.append((c.job.future, (logits[i].copy(), rows)))
        except Exception as e:
            log.exception("prefill batch failed", extra={"model": self.name, "rows": len(chunks)})
            if traced:
                self._trace(traced, len(chunks), start_ns, e)
            self.post(reject, [c.job.future for c in chunks], as_service_error(e))
            return []
        for future, err in refused:
            self.post(reject, [future], err)
        for c, rows in unfinished:  # each goes on from the state after exactly its chunk
            c.job.done += c.tokens.size
            c.job.states = rows
        if results:
            self.post(resolve, results)
        return [c.job for c, _ in unfinished]

    def _trace(
        self, chunks: list[Chunk], rows: int, start_ns: int, error: Exception | None = None
    ) -> None:
        """The spans of the traced jobs of a bucket that ran from `start_ns` until now: its
        queue wait (a job's first pass) and the batch it ran in."""
        end_ns = tracing.now_ns()
        for c in chunks:
            assert c.job.trace is not None
            ctx, queued_ns = c.job.trace
            if c.job.done == 0:  # (updated after this: its first chunk)
                tracing.record(
                    "queue wait", ctx, queued_ns, start_ns, {"rnnserve.model": self.name}
                )
            attrs: dict[str, str | int | bool] = {
                "rnnserve.model": self.name,
                "rnnserve.batch_size": rows,
                "rnnserve.tokens": int(c.tokens.size),
                "rnnserve.last_chunk": c.last,
            }
            tracing.record("prefill batch", ctx, start_ns, end_ns, attrs, error)

    def _call(
        self, tokens: np.ndarray, lengths: np.ndarray, states: StateRows
    ) -> tuple[np.ndarray, StateRows]:
        t0 = time.perf_counter()
        out = self.runner.run(tokens, lengths, states)
        dt = time.perf_counter() - t0
        self.budget.observe(tokens.size, dt)
        if self.meters is not None:
            self.meters.prefill_time.observe(dt)
            self.meters.prefill_batch.observe(len(lengths))
        return out
