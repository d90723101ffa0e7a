"""The native JSON is the engine's typed results encoded as they are (`service/api/encode.py`);
the pydantic models of `schemas.py` describe the same shapes for OpenAPI. These keep the two
agreeing: every key a result encodes is a documented field, every required field is there, and
the document's model accepts the body."""

from __future__ import annotations

import base64
import json
import types
import typing
from typing import Any

import msgspec
import pytest
from pydantic import BaseModel

from service.api import encode, health, schemas
from service.protocol import messages as p
from service.protocol.ops import EngineLoad, ModelLoad

CLS = p.Classification("positive", {"negative": 0.25, "positive": 0.75})
LM = p.NextTokens((p.Prob("e", 0.5), p.Prob(" ", 0.25)))
USAGE = p.Usage(3, 5, 8)
LOGPROBS = (p.TokenLogprob("t", -0.5, (p.Alternative("t", -0.5), p.Alternative("a", -1.5))),)

CASES: list[tuple[str, Any, type[BaseModel]]] = [
    ("generation", p.GenerationResult("m", "to be", "length", USAGE, 7), schemas.GenerateResponse),
    (
        "session generation",
        p.GenerationResult("m", "to be", "stop", USAGE, 7, "\n", LOGPROBS, "s", 4, replayed=False),
        schemas.GenerateResponse,
    ),
    ("session", p.SessionInfo("s", "m", 1, 1.5, 2.5, 3600.0, 7, 2), schemas.SessionInfo),
    (
        "reset",
        p.SessionInfo("s", "m", 2, 1.5, 2.5, 3600.0, 0, 0, replayed=True),
        schemas.SessionInfo,
    ),
    ("feed, classifier", p.FeedResult("s", 2, 3, 0, CLS), schemas.FeedResponse),
    ("feed, language model", p.FeedResult("s", 2, 3, 1, LM, replayed=True), schemas.FeedResponse),
    ("feed, no token yet", p.FeedResult("s", 1, 0, 4, None), schemas.FeedResponse),
    ("state", p.StateExport("s", "m", 3, b"\x00RNNS\xff"), schemas.StateResponse),
    ("predict", {"model": "m", "outputs": [CLS, LM]}, schemas.PredictResponse),
    (
        "load",
        EngineLoad({"m": ModelLoad(queued=2, streams=5)}, open_streams=5, max_open_streams=64),
        health.EngineLoad,
    ),
]


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds (through Optional, unions and lists)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (list, typing.Union, types.UnionType):
        return [m for a in typing.get_args(annotation) for m in _models(a)]
    return []


def _agrees(model: type[BaseModel], data: Any, where: str) -> None:
    if isinstance(data, list):
        for i, item in enumerate(data):
            _agrees(model, item, f"{where}[{i}]")
        return
    if data is None:
        return
    assert isinstance(data, dict), where
    fields = model.model_fields
    assert set(data) <= set(fields), f"{where}: undocumented {set(data) - set(fields)}"
    required = {n for n, f in fields.items() if f.is_required()}
    assert required <= set(data), f"{where}: missing {required - set(data)}"
    for name, value in data.items():
        for nested in _models(fields[name].annotation):
            _agrees(nested, value, f"{where}.{name}")


@pytest.mark.parametrize(("name", "result", "model"), CASES, ids=[c[0] for c in CASES])
def test_the_encoded_result_is_the_documented_shape(
    name: str, result: Any, model: type[BaseModel]
) -> None:
    body = msgspec.json.decode(encode.response(result).body)
    if not isinstance(result, dict):  # the frames' data (SSE `done`, WebSocket) is the same
        assert body == json.loads(json.dumps(encode.body(result)))
    _agrees(model, body, name)
    model.model_validate(body)


def test_unset_optional_fields_are_left_out_and_a_feed_shows_its_null_output() -> None:
    stateless = encode.body(CASES[0][1])
    assert not {"stop", "logprobs", "session_id", "version", "replayed"} & set(stateless)
    assert encode.body(CASES[1][1])["replayed"] is False  # a session's generation says so
    assert "replayed" not in encode.body(CASES[2][1])  # a plain session lookup does not
    fed = encode.body(CASES[6][1])
    assert fed["output"] is None and fed["replayed"] is False


def test_a_replay_says_so_in_a_header_and_a_state_is_base64() -> None:
    assert encode.response(CASES[5][1], replayed=True).headers["Idempotent-Replayed"] == "true"
    assert "idempotent-replayed" not in encode.response(CASES[4][1], replayed=False).headers
    assert base64.b64decode(encode.body(CASES[7][1])["state"]) == b"\x00RNNS\xff"
