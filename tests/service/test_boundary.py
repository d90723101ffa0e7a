"""The engine boundary (issue 14): the API layer (and its middlewares) reaches the engine only through
`service.engine.client` (the `EngineClient` interface), `catalog` (model views) and `protocol`
(the typed messages), and every message is frozen and crosses a process boundary intact."""

from __future__ import annotations

import ast
import math

import msgspec
import pytest

from service.engine import protocol as p
from tests.conftest import ROOT

# pure helpers an API module may use besides the boundary (no engine state behind them)
ALLOWED = {"service.engine.protocol", "service.engine.catalog", "service.engine.client"}
PURE = {"service.engine.sampling"}  # v2 turns logits into PROBS with its softmax


def _engine_imports(path: str) -> set[str]:
    tree = ast.parse((ROOT / path).read_text())
    found = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("service.engine")
        ):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("service.engine")}
    return found


API = sorted(
    str(f.relative_to(ROOT))
    for layer in ("api", "middleware")
    for f in (ROOT / "service" / layer).rglob("*.py")
)


@pytest.mark.parametrize("path", API)
def test_the_api_layer_uses_the_engine_only_through_its_interface(path: str) -> None:
    assert _engine_imports(path) <= ALLOWED | PURE, path


SAMPLES: list[p.Message] = [
    p.Classification("positive", {"negative": 0.25, "positive": 0.75}),
    p.NextTokens((p.Prob("e", 0.5), p.Prob(" ", 0.25))),
    p.GenerationResult(
        model="m",
        text="to be",
        finish_reason="stop",
        usage=p.Usage(3, 5, 8),
        seed=2**53 - 1,
        stop="\n",
        logprobs=(p.TokenLogprob("t", -0.5, (p.Alternative("t", -0.5), p.Alternative("a", -1.5))),),
        session_id="s",
        version=4,
    ),
    p.SessionInfo("s", "m", 1, 1.5, 2.5, 1.0, 7, 2),
    p.FeedResult("s", 2, 3, 0, p.Classification("negative", {"negative": 1.0, "positive": 0.0})),
    p.FeedResult("s", 1, 0, 4, None, replayed=True),
    p.StateExport("s", "m", 3, b"\x00RNNS\xff"),
    p.SequenceRef("42", "42", start=True),
    p.GenerateParams(prompt="ROMEO:", max_tokens=4, stop=("\n",), seed=7),
    p.Finished(p.GenerationResult("m", "", "length", p.Usage(0, 0, 0), 1)),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_is_frozen_and_survives_msgpack(msg: p.Message) -> None:
    back = msgspec.msgpack.decode(msgspec.msgpack.encode(msg), type=type(msg))
    assert back == msg
    field = msg.__struct_fields__[0]
    with pytest.raises(AttributeError):
        setattr(msg, field, getattr(msg, field))


def test_a_feed_output_decodes_to_its_own_kind() -> None:
    for out in (SAMPLES[0], SAMPLES[1]):
        fed = p.FeedResult("s", 1, 1, 0, out)  # type: ignore[arg-type]
        assert msgspec.msgpack.decode(msgspec.msgpack.encode(fed), type=p.FeedResult) == fed


def test_an_idempotency_record_replays_as_the_typed_result_marked_replayed() -> None:
    fed = SAMPLES[4]
    assert isinstance(fed, p.FeedResult)
    again = p.replayed(p.FeedResult, p.stored(fed))
    assert again == msgspec.structs.replace(fed, replayed=True)
    # a record written before outputs carried their kind (stored as the native JSON was)
    old = {
        "session_id": "s",
        "version": 2,
        "tokens": 3,
        "pending_chars": 0,
        "output": {"next": [{"token": "a", "prob": 0.5}]},
    }
    got = p.replayed(p.FeedResult, old)
    assert got.output == p.NextTokens((p.Prob("a", 0.5),)) and got.replayed
    assert math.isclose(got.output.next[0].prob, 0.5)
