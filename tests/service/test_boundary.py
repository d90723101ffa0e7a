"""The engine boundary (issue 14): the API layer (and its middlewares) reaches the engine only through
`service.protocol` (the `EngineClient` interface, model views, the typed messages), and every
message is frozen and crosses a process boundary intact."""

from __future__ import annotations

import ast
import math

import msgspec
import pytest

from service.protocol import messages as p
from tests.conftest import ROOT

# what an API module may not import: the engine process's side (the engine core, the session
# rules and stores, the engine's end of the wire) and what assembles processes
FORBIDDEN = (
    "service.engine",
    "service.sessions",
    "service.transport",
    "service.supervisor",
    "service.app",
    "service.server",
)


def _imports(path: str) -> set[str]:
    tree = ast.parse((ROOT / path).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


API = sorted(str(f.relative_to(ROOT)) for f in (ROOT / "service" / "api").rglob("*.py"))


@pytest.mark.parametrize("path", API)
def test_the_api_layer_uses_the_engine_only_through_its_interface(path: str) -> None:
    """The API reaches the engine through `service.protocol` only (`EngineClient`, the
    operations and their typed results), whichever process the engine runs in."""
    bad = {m for m in _imports(path) if m.startswith(FORBIDDEN) or m.startswith("onnxruntime")}
    assert bad == set(), path


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
