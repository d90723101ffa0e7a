"""What the engine thread hands to the event loop: callbacks run there by
`call_soon_threadsafe` (the only place futures and stream events are touched), and the model's
metric children, bound once (`labels()` costs 1-2 us a call)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.engine.batch import Routed
from service.engine.prefill import StateRows
from service.engine.stream import Stream
from service.errors import EngineError, ServiceError
from service.metrics import Metrics
from service.protocol.messages import StepLogprob


class Meters:
    """One model's metric children, bound once: `labels()` costs 1-2 us a call, and a decode
    step would otherwise make six of them."""

    def __init__(self, m: Metrics, name: str) -> None:
        self.prefill_time = m.step_time.labels(name, "prefill")
        self.prefill_batch = m.batch_size.labels(name, "prefill")
        self.decode_time = m.step_time.labels(name, "decode")
        self.decode_batch = m.batch_size.labels(name, "decode")
        self.queue_depth = m.queue_depth.labels(name)
        self.active_streams = m.active_streams.labels(name)
        self.tokens = m.tokens.labels(name)
        self.itl = m.itl.labels(name)
        self.ttft = m.ttft.labels(name)


def resolve(items: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for fut, res in items:
        if not fut.done():  # a cancelled caller
            fut.set_result(res)


def reject(futures: list[asyncio.Future[Any]], err: BaseException) -> None:
    for fut in futures:
        if not fut.done():
            fut.set_exception(err)


def emit(
    streams: Sequence[Stream],
    local: Sequence[int] | None,
    tokens: list[int],
    texts: dict[int, str] | None,
    logprobs: dict[int, StepLogprob] | None,
    routed: Routed,
    stats: tuple[Meters, int, float, float | None] | None,
) -> None:
    """One decode step's tokens: each routed sink's in one call, then the rows without a route
    (`local`: their rows; None: every row) one by one; `tokens`, `texts` and `logprobs` are by
    row."""
    if stats is not None:  # the previous step's metrics ride along (off the engine thread)
        record(*stats)
    for sink, rids, ids, ends in routed:
        sink(rids, ids, ends)
    if local is None and texts is None and logprobs is None:  # one process, the usual step
        for s, tok in zip(streams, tokens, strict=True):
            s.emit(tok, None, None)
        return
    texts, logprobs = texts or {}, logprobs or {}
    for i in range(len(streams)) if local is None else local:
        streams[i].emit(tokens[i], texts.get(i), logprobs.get(i))


def record(m: Meters, n: int, step_s: float, gap_s: float | None) -> None:
    m.decode_time.observe(step_s)
    m.decode_batch.observe(n)
    m.tokens.inc(n)
    if gap_s is not None:  # every continuing stream saw this gap
        m.itl.observe(gap_s)


def finish(
    done: list[tuple[Stream, np.ndarray | None, StateRows | None, int, str | None]],
) -> None:
    for s, logits, rows, sampled, stop in done:
        s.finish(logits, rows, sampled, stop)


def fail_streams(streams: Sequence[Stream], err: BaseException) -> None:
    for s in streams:
        s.fail(err)


def as_service_error(e: Exception) -> ServiceError:
    """What waiters of a failed onnxruntime call receive."""
    return e if isinstance(e, ServiceError) else EngineError(f"inference failed: {e}")
