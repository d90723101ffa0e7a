"""The engine's operations: each names the type of its answer, crosses the wire as it is, and
says which request field each of its strings came from."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
import pytest

from service.protocol import ops
from service.protocol.messages import (
    FeedResult,
    GenerateParams,
    SequenceOutput,
    SequenceRef,
    SessionInfo,
)
from service.transport import wire

PARAMS = GenerateParams(prompt="ROMEO:", stop=("\n", "END"), max_tokens=4)
SAMPLES: list[Any] = [
    ops.Health(),
    ops.Predict("m", [[1, 2], []], 3),
    ops.Logits("m", [[1]]),
    ops.Generate("m", PARAMS),
    ops.CreateSession("m", "s", 60.0, b"\x00blob", "alice"),
    ops.GetSession("s", None),
    ops.DeleteSession("s", "alice"),
    ops.Reset("s", 3, "key-1", None),
    ops.Feed("s", "to be", 5, None, "key-2", "alice"),
    ops.SessionGenerate("s", PARAMS, 1, None, None),
    ops.ExportState("s", None),
    ops.SequenceStep("m", SequenceRef("7", "7", start=True), "hi", None, None),
    ops.LiveSessions(),
    ops.Load(),
    ops.RepositoryIndex(ready=True),
    ops.LoadModel("m", "2", {"max_batch_size": 8, "version_policy": {"specific": ["2"]}}),
    ops.UnloadModel("m", None, 30.0),
]


def test_the_samples_cover_every_operation() -> None:
    assert {type(op) for op in SAMPLES} == set(ops.operations())


@pytest.mark.parametrize("op", SAMPLES, ids=lambda op: type(op).__name__)
def test_every_operation_crosses_the_wire_as_it_is(op: Any) -> None:
    frame = wire.decoder.decode(wire.encoder.encode(wire.Call(7, op)))
    assert isinstance(frame, wire.Call) and frame.op == op and type(frame.op) is type(op)


def test_each_operation_names_its_answer() -> None:
    assert ops.Feed.result_type() is FeedResult
    assert ops.GetSession.result_type() is SessionInfo
    assert ops.Logits.result_type() is np.ndarray
    assert ops.DeleteSession.result_type() is type(None)
    assert ops.Health.result_type() == dict[str, str]
    for kind in ops.operations():
        if issubclass(kind, ops.Op):
            kind.result_type()  # never raises: every unary operation names one


def test_strings_are_named_by_the_field_a_client_sent_them_in() -> None:
    assert list(SAMPLES[8].texts()) == [("text", "to be")]
    assert list(SAMPLES[3].texts()) == [("prompt", "ROMEO:"), ("stop[0]", "\n"), ("stop[1]", "END")]
    assert list(SAMPLES[11].texts()) == [("TEXT", "hi")]
    assert list(ops.SequenceStep("m", SequenceRef("7", "7"), None, [1], None).texts()) == []
    assert list(SAMPLES[5].texts()) == []
    assert list(SAMPLES[15].texts()) == [
        ("model", "m"),
        ("version", "2"),
        ("settings.max_batch_size", "max_batch_size"),
        ("settings.version_policy", "version_policy"),
        ("settings.version_policy.specific", "specific"),
        ("settings.version_policy.specific[0]", "2"),
    ]


def test_operations_are_frozen() -> None:
    with pytest.raises(AttributeError):
        SAMPLES[8].text = "other"  # type: ignore[misc]
    assert msgspec.structs.replace(SAMPLES[8], text="x").text == "x"


def test_a_sequence_steps_answer_crosses_the_wire_with_its_version() -> None:
    out = SequenceOutput(np.linspace(-1, 1, 5).astype(np.float32), "m@2")
    back = wire.decode_result(ops.SequenceStep.result_type(), wire.answer(out))
    assert back.model == "m@2" and back.logits.dtype == np.float32
    assert np.array_equal(back.logits, out.logits)
