"""The committed fixture models: valid artifacts whose manifests match their graphs, exact in a
stream (chunk boundaries anywhere in the text, an unfinished word held back as pending text), and
not uniform. Needs onnxruntime only (no torch): these are what the service tests load."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from service.contract import ModelManifest, load_artifact, tokenizer_from_spec  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "models"
NAMES = [
    "tiny-char-lstm",
    "tiny-char-gru",
    "tiny-char-rnn",
    "tiny-char-peephole",
    "tiny-sentiment-lstm",
    "tiny-sentiment-gru",
]
_CACHE: dict[str, tuple[ModelManifest, ort.InferenceSession]] = {}


def load(name: str) -> tuple[ModelManifest, ort.InferenceSession]:
    if name not in _CACHE:
        manifest, path = load_artifact(FIXTURES / name)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        _CACHE[name] = (
            manifest,
            ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]),
        )
    return _CACHE[name]


def step(m: ModelManifest, sess: ort.InferenceSession, ids: list[int], states: list[np.ndarray]):  # type: ignore[no-untyped-def]
    feed = {m.io.tokens: np.array([ids], np.int64), m.io.lengths: np.array([len(ids)], np.int32)}
    feed.update({s.input: x for s, x in zip(m.io.states, states, strict=True)})
    logits, *new = sess.run(m.io.output_names(), feed)
    return logits, new


@pytest.mark.parametrize("name", NAMES)
def test_fixture_manifest_matches_graph(name: str) -> None:
    m, sess = load(name)
    assert m.name == name
    assert [i.name for i in sess.get_inputs()] == m.io.input_names()
    assert [o.name for o in sess.get_outputs()] == m.io.output_names()
    graph_shapes = {t.name: t.shape for t in [*sess.get_inputs(), *sess.get_outputs()]}
    for s in m.io.states:
        for name_ in (s.input, s.output):
            dims = ["batch" if isinstance(d, str) else d for d in graph_shapes[name_]]
            assert dims == s.shape
    checks = m.training.model_dump()["export_checks"]
    assert max(checks.values()) <= 1e-5
    assert (m.labels is None) == (m.task == "next_token")
    assert {s.name for s in m.io.states} >= {"h"}
    if name == "tiny-sentiment-gru":  # the pool-state path is covered by a shipped fixture
        assert [s.name for s in m.io.states] == ["h", "pool_max"]


@pytest.mark.parametrize("name", [n for n in NAMES if "char" in n])
def test_char_fixtures_are_not_uniform(name: str) -> None:
    m, sess = load(name)
    tok = tokenizer_from_spec(m.tokenizer)
    logits, _ = step(m, sess, tok.encode("ROMEO:\nWhat say"), m.init_states(1))
    p = np.exp(logits[0] - logits[0].max())
    p /= p.sum()
    assert p.max() > 3.0 / len(p)  # a trained model is far from uniform
    assert tok.decode([int(p.argmax())]) == " "  # after "What say", a space is most likely


TEXT = st.text(alphabet="abcdefg hijk,.!<br />\nMOVIE good bad", min_size=1, max_size=60)


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(NAMES), text=TEXT, cuts=st.lists(st.integers(0, 60), max_size=6))
def test_stream_equals_whole(name: str, text: str, cuts: list[int]) -> None:
    """Text split at arbitrary characters (inside words too), tokenized with `encode_stream` and
    fed with the state carried, ends in the state and logits of feeding the whole text."""
    m, sess = load(name)
    tok = tokenizer_from_spec(m.tokenizer)
    if m.tokenizer.kind == "char":
        text = "".join(ch for ch in text if ch in tok.stoi)  # type: ignore[union-attr]
    whole_ids = tok.encode(text)
    if not whole_ids:
        return
    whole = step(m, sess, whole_ids, m.init_states(1))

    bounds = [0, *sorted({c for c in cuts if 0 < c < len(text)}), len(text)]
    states, pending, logits = m.init_states(1), "", None
    fed: list[int] = []
    for a, b in itertools.pairwise(bounds):
        ids, pending = tok.encode_stream(pending, text[a:b])
        if ids:
            logits, states = step(m, sess, ids, states)
            fed += ids
    tail = tok.encode(pending)  # end of stream: the held-back word is complete
    if tail:
        logits, states = step(m, sess, tail, states)
        fed += tail
    assert fed == whole_ids
    assert logits is not None
    np.testing.assert_allclose(logits, whole[0], atol=1e-5, rtol=0)
    for x, y in zip(states, whole[1], strict=True):
        np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-6)
