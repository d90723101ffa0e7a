"""The wire between an API worker and the engine process: every frame survives msgpack, an
answer decodes as its operation's result type (arrays included), and an error comes back as
the class registered for its code."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from service import errors
from service.protocol import ops
from service.protocol.events import ClientTooSlow
from service.protocol.messages import Classification, FeedResult, NextTokens, Prob
from service.transport import wire


def _answer(op: type, value: object) -> object:
    """`value` as the worker reads it back: encoded in a Result frame by the engine."""
    sent = wire.encoder.encode([wire.Result(3, wire.answer(value))])
    (frame,) = wire.frames_decoder.decode(sent)
    assert isinstance(frame, wire.Result) and frame.rid == 3
    return wire.decode_result(op.result_type(), frame.value)  # type: ignore[attr-defined]


def test_answers_decode_as_their_operations_result_types() -> None:
    fed = FeedResult("s", 2, 3, 0, Classification("negative", {"negative": 1.0}))
    assert _answer(ops.Feed, fed) == fed
    outs = [NextTokens((Prob("a", 0.5),)), None]
    assert _answer(ops.Predict, outs) == outs
    assert _answer(ops.DeleteSession, None) is None
    assert _answer(ops.LiveSessions, 7) == 7
    assert _answer(ops.Health, {"m": "stalled"}) == {"m": "stalled"}


@pytest.mark.parametrize("dtype", ["float32", "float16", "int64"])
def test_an_array_answer_keeps_its_dtype_shape_and_bits(dtype: str) -> None:
    a = (np.arange(12, dtype=np.float64).reshape(3, 4) / 7).astype(dtype)
    back = _answer(ops.Logits, a)
    assert isinstance(back, np.ndarray) and back.dtype == a.dtype and back.shape == a.shape
    assert np.array_equal(back, a)


def test_an_answer_of_another_type_is_refused_not_misread() -> None:
    with pytest.raises(msgspec.ValidationError):
        _answer(ops.LiveSessions, "seven")


def test_an_error_comes_back_as_the_class_registered_for_its_code() -> None:
    e = errors.VersionConflict("at 3, not 2", field="expected_version")
    e.headers = {"Retry-After": "1"}
    back = wire.raise_error(wire.error_info(e))
    assert type(back) is errors.VersionConflict
    assert (back.status, back.code, back.message, back.field) == (
        409,
        "version_conflict",
        "at 3, not 2",
        "expected_version",
    )
    assert back.headers == {"Retry-After": "1"}
    # defined outside errors.py, still known by its code
    assert type(wire.raise_error(wire.error_info(ClientTooSlow("slow")))) is ClientTooSlow


def test_an_unknown_code_is_a_plain_service_error_and_a_crash_a_500() -> None:
    info = wire.ErrorInfo(418, "teapot", "short and stout")
    back = wire.raise_error(info)
    assert type(back) is errors.ServiceError and (back.status, back.code) == (418, "teapot")
    crash = wire.error_info(ZeroDivisionError("x"))
    assert (crash.status, crash.code) == (500, "engine_error")
    assert "ZeroDivisionError" in crash.message


def test_a_call_carries_its_streams_slot() -> None:
    call = wire.Call(5, ops.Generate("m", ops.GenerateParams()), wire.SlotRef(5, "alice", rows=3))
    back = wire.decoder.decode(wire.encoder.encode(call))
    assert back == call


def test_a_steps_tokens_travel_as_two_arrays_and_keep_their_values() -> None:
    """Ids and stream ids cross as little-endian bytes: exact for any int32 token and int64 id,
    whatever the batch arrays' own dtypes; `ends` empty when no stream ends."""
    rids = np.array([3, 2**40, 4], np.int64)
    ids = np.array([0, 2**31 - 1, 57], np.int64)  # sampling's int64 tokens
    step = wire.StepIds.of(rids, ids, np.array([4]))
    (back,) = wire.frames_decoder.decode(wire.encoder.encode([step]))
    assert back == step and back.arrays() == (rids.tolist(), ids.tolist())
    assert back.ending() == {4} and wire.StepIds.of(rids, ids, np.array([], np.int64)).ends == b""
