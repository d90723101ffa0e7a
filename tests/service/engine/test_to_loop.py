"""What the engine thread hands the event loop: results to waiting futures (a caller that left is
skipped), one failure to many, a step's tokens to its streams, and inference errors as the
`ServiceError` a client can be told."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from service.engine import to_loop
from service.errors import EngineError, SessionLimit
from service.protocol.messages import StepLogprob


async def test_resolve_skips_a_caller_that_left_and_reject_fails_the_rest() -> None:
    loop = asyncio.get_running_loop()
    waiting, left, failing = loop.create_future(), loop.create_future(), loop.create_future()
    left.cancel()
    to_loop.resolve([(waiting, 1), (left, 2)])
    assert waiting.result() == 1 and left.cancelled()
    err = EngineError("boom")
    to_loop.reject([failing, waiting], err)
    assert failing.exception() is err and waiting.result() == 1


class _Stream:
    """The seam: what `emit` hands each stream of a decode step."""

    def __init__(self) -> None:
        self.got: list[tuple[int, Any, Any]] = []

    def emit(self, token: int, text: str | None, logprob: StepLogprob | None) -> None:
        self.got.append((token, text, logprob))


def test_a_steps_tokens_go_to_their_streams_in_order() -> None:
    streams = [_Stream(), _Stream(), _Stream()]
    to_loop.emit(streams, None, [5, 6, 7], None, None, [], None)  # type: ignore[arg-type]
    assert [s.got for s in streams] == [[(5, None, None)], [(6, None, None)], [(7, None, None)]]
    lp = StepLogprob(-0.1, ())
    to_loop.emit(streams, None, [1, 2, 3], {1: "x"}, {2: lp}, [], None)  # type: ignore[arg-type]
    assert [s.got[-1] for s in streams] == [(1, None, None), (2, "x", None), (3, None, lp)]


def test_routed_rows_reach_their_sink_as_arrays_and_local_rows_their_stream() -> None:
    """Rows 0 and 2 routed to one sink, row 1 local: the sink gets one call with both."""
    got: list[tuple[list[int], list[int], Any]] = []
    streams = [_Stream(), _Stream(), _Stream()]

    def sink(rids: np.ndarray, ids: np.ndarray, ends: np.ndarray | None) -> None:
        got.append((rids.tolist(), ids.tolist(), None if ends is None else ends.tolist()))

    routed = [(sink, np.array([10, 12]), np.array([5, 7]), np.array([12]))]
    to_loop.emit(streams, (1,), [5, 6, 7], None, None, routed, None)  # type: ignore[arg-type]
    assert got == [([10, 12], [5, 7], [12])]
    assert [s.got for s in streams] == [[], [(6, None, None)], []]


def test_an_inference_failure_reaches_waiters_as_a_service_error() -> None:
    wrapped = to_loop.as_service_error(RuntimeError("onnxruntime: bad shape"))
    assert isinstance(wrapped, EngineError) and "bad shape" in wrapped.message
    limit = SessionLimit("cap")
    assert to_loop.as_service_error(limit) is limit
