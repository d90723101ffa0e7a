"""A stream's backlog: the engine never waits on a consumer, so what the consumer has not taken
is bounded in bytes, and past it the stream stops with `client_too_slow`; a stream whose tokens are
forwarded as they are emitted (the engine process's host) buffers only its end."""

from __future__ import annotations

import numpy as np

from service.engine.sampling import SamplingParams
from service.engine.stream import Stream
from service.protocol.events import EVENT_BYTES, LOGPROB_BYTES, ClientTooSlow, TokenEvent

LP = {"logprob": -0.1, "top": []}


def _stream(logprobs: int | None, limit: int) -> Stream:
    params = SamplingParams(1.0, 0, 1.0, seed=1, max_tokens=10**6, logprobs=logprobs)
    return Stream(params, np.zeros(5, np.float32), [], str, max_backlog_bytes=limit)


async def test_a_backlog_past_its_bound_cancels_the_stream_with_client_too_slow() -> None:
    s = _stream(20, 100 * (EVENT_BYTES + 20 * LOGPROB_BYTES))
    for _ in range(150):
        s.emit(1, None, LP)
    assert s.cancelled
    batches = [b async for b in s.iter_batches()]
    events = [e for b in batches for e in b]
    assert sum(isinstance(e, TokenEvent) for e in events) == 100
    assert isinstance(events[-1].error, ClientTooSlow)  # type: ignore[union-attr]
    assert events[-1].error.status == 503  # type: ignore[union-attr]


async def test_a_consumer_that_keeps_up_is_never_cut_off() -> None:
    s = _stream(None, 10 * EVENT_BYTES)
    got = 0
    for _ in range(100):
        for _ in range(10):  # exactly the bound, then the consumer drains
            s.emit(1, None, None)
        batch = await anext(s.iter_batches())
        got += len(batch)
    assert got == 1000 and not s.cancelled


async def test_forwarded_tokens_go_to_the_sink_in_order_and_only_the_end_is_buffered() -> None:
    s = _stream(None, 10 * EVENT_BYTES)
    for _ in range(3):  # emitted before the consumer attached: forwarded first
        s.emit(1, None, None)
    got: list[int] = []
    s.forward_tokens(lambda ev: got.append(ev.index))
    for _ in range(100):  # ten times the bound: a forwarded stream's backlog is not its own
        s.emit(1, None, None)
    s.finish(np.zeros(5, np.float32), [], 103, None)
    assert got == list(range(103)) and not s.cancelled
    batches = [b async for b in s.iter_batches()]
    assert len(batches) == 1 and [type(e).__name__ for e in batches[0]] == ["DoneEvent"]
    assert batches[0][0].completion_tokens == 103  # type: ignore[union-attr]


async def test_a_forwarded_stream_cancelled_forwards_nothing_more() -> None:
    s = _stream(None, 10 * EVENT_BYTES)
    got: list[int] = []
    s.forward_tokens(lambda ev: got.append(ev.index))
    s.emit(1, None, None)
    s.cancel()
    s.emit(1, None, None)  # a step already under way
    assert got == [0]


def test_only_a_stream_still_in_the_batch_tells_the_scheduler_of_its_cancel() -> None:
    """A consumer closes its stream at its end too: once the row finished or failed it has left
    the batch, and a step must not scan the batch for it (one scan per ended stream per step
    at 4,096 streams); a stream cancelled while it runs, or cut off as too slow, is told."""
    told: list[str] = []
    running, finished, failed = (_stream(None, 10**9) for _ in range(3))
    for name, s in [("running", running), ("finished", finished), ("failed", failed)]:
        s.on_cancel = lambda name=name: told.append(name)
    finished.finish(np.zeros(5, np.float32), [], 3, None)
    failed.fail(RuntimeError("the step failed"))
    for s in (running, finished, failed):
        s.cancel()
    assert told == ["running"] and all(s.cancelled for s in (running, finished, failed))
    slow = _stream(None, EVENT_BYTES)
    slow.on_cancel = lambda: told.append("slow")
    slow.emit(1, None, None)
    slow.emit(1, None, None)  # past its backlog bound: cancelled, and the scheduler told
    assert told == ["running", "slow"]


async def test_on_end_hands_over_the_end_alone_and_at_once_if_it_came_already() -> None:
    from service.engine.stream import DoneEvent

    s = _stream(None, 10 * EVENT_BYTES)
    got: list[object] = []
    s.forward_tokens(lambda ev: got.append(ev.index))
    s.on_end(got.append)
    s.emit(1, None, None)
    s.finish(None, None, 1, None)
    assert got[0] == 0 and isinstance(got[1], DoneEvent) and len(got) == 2
    assert not s._buf  # nothing left for iter_batches

    late = _stream(None, 10 * EVENT_BYTES)
    late.forward_tokens(lambda ev: None)
    late.fail(RuntimeError("boom"))  # before anyone asked for the end: buffered ...
    ends: list[object] = []
    late.on_end(ends.append)  # ... and handed over as the callback is set
    assert len(ends) == 1 and str(ends[0].error) == "boom"  # type: ignore[attr-defined]
