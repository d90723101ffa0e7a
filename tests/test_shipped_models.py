"""The shipped models in models/ load, match their checksums, stream exactly and pass what their
cards claim (no torch)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.contract import ModelManifest, load_artifact, tokenizer_from_spec

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
BEHAVIOUR = ROOT / "training" / "data" / "behaviour_sets" / "sentiment.jsonl"
SHIPPED = sorted(p for p in MODELS.iterdir() if (p / "manifest.json").is_file())
TEXT = "I expected to hate this, but the second half won me over. ROMEO: And thou art"


def _run(
    sess: ort.InferenceSession, m: ModelManifest, ids: list[int], states: list[np.ndarray]
) -> tuple[np.ndarray, list[np.ndarray]]:
    feeds = {m.io.tokens: np.array([ids], np.int64), m.io.lengths: np.array([len(ids)], np.int32)}
    feeds |= {s.input: x for s, x in zip(m.io.states, states, strict=True)}
    out = sess.run(None, feeds)
    return out[0], list(out[1:])


def test_all_four_are_shipped() -> None:
    names = {p.name for p in SHIPPED}
    assert {"char-lstm", "char-gru", "sentiment-lstm", "sentiment-gru"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_chunked_feeding_equals_one_pass(path: Path) -> None:
    manifest, onnx_path = load_artifact(path)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    tok = tokenizer_from_spec(manifest.tokenizer)
    text = (
        TEXT
        if manifest.task == "classify"
        else "".join(c for c in TEXT if c in getattr(tok, "stoi", {}))
    )
    whole, _ = _run(sess, manifest, tok.encode(text), manifest.init_states(1))
    states, pending, logits = manifest.init_states(1), "", None
    for i in range(0, len(text), 7):
        ids, pending = tok.encode_stream(pending, text[i : i + 7])
        if ids:
            logits, states = _run(sess, manifest, ids, states)
    if pending:
        logits, states = _run(sess, manifest, tok.encode(pending), states)
    assert logits is not None
    np.testing.assert_allclose(logits, whole, atol=1e-5, rtol=0)


VARIANTS = [(p, v.name) for p in SHIPPED for v in load_artifact(p)[0].variants]


@pytest.mark.parametrize(("path", "variant"), VARIANTS, ids=lambda x: getattr(x, "name", x))
def test_shipped_variants_load_and_agree_with_fp32(path: Path, variant: str) -> None:
    """Each shipped variant: checksum, the io contract as served (the fp16 graph's state in
    the dtype its variant records), outputs close to the fp32 graph's (int8 approximately,
    fp16 closely), its recorded metric within its tolerance."""
    manifest, base = load_artifact(path)
    served, graph = load_artifact(path, variant=variant)  # sha256 checked
    v = next(x for x in manifest.variants if x.name == variant)
    worse = v.fp32_value - v.value if v.metric == "val_accuracy" else v.value - v.fp32_value
    assert worse <= v.tolerance
    tok = tokenizer_from_spec(manifest.tokenizer)
    text = (
        TEXT
        if manifest.task == "classify"
        else "".join(c for c in TEXT if c in getattr(tok, "stoi", {}))
    )
    ids = tok.encode(text)
    a, _ = _run(ort.InferenceSession(str(base)), manifest, ids, manifest.init_states(1))
    b, _ = _run(ort.InferenceSession(str(graph)), served, ids, served.init_states(1))
    pa, pb = (np.exp(x - x.max()) / np.exp(x - x.max()).sum() for x in (a[0], b[0]))
    assert np.abs(pa - pb).max() < (0.01 if variant == "fp16" else 0.1)


CLASSIFIERS = [p for p in SHIPPED if load_artifact(p)[0].task == "classify"]


def _behaviour(path: Path) -> dict[str, bool]:
    """Each behavioural sentence -> whether the shipped graph gives its expected label (argmax),
    fed alone through onnxruntime with the server's tokenizer."""
    manifest, onnx_path = load_artifact(path)
    assert manifest.labels is not None
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    tok = tokenizer_from_spec(manifest.tokenizer)
    out = {}
    for line in BEHAVIOUR.read_text(encoding="utf-8").splitlines():
        case = json.loads(line)
        logits, _ = _run(sess, manifest, tok.encode(case["text"]), manifest.init_states(1))
        out[case["text"]] = manifest.labels[int(logits[0].argmax())] == case["label"]
    return out


@pytest.mark.parametrize("path", CLASSIFIERS, ids=lambda p: p.name)
def test_shipped_classifier_passes_what_its_card_claims(path: Path) -> None:
    """The card's behavioural table (pass counts per capability) and its list of failures are
    exactly what the graph does on the committed sentences."""
    card = (path / "README.md").read_text(encoding="utf-8")
    section = card.split("<!-- behaviour:begin", 1)[1].split("<!-- behaviour:end -->", 1)[0]
    claimed = {
        c: (int(a), int(b))
        for c, a, b in re.findall(r"^\| (\w+) \| (\d+)/(\d+) \|$", section, re.M)
    }
    claimed_fails = set(re.findall(r'^- \w+: "(.*)" → ', section, re.M))
    got = _behaviour(path)
    caps: dict[str, list[bool]] = {}
    for line in BEHAVIOUR.read_text(encoding="utf-8").splitlines():
        case = json.loads(line)
        caps.setdefault(case["capability"], []).append(got[case["text"]])
    assert claimed == {c: (sum(v), len(v)) for c, v in caps.items()}
    assert claimed_fails == {t for t, ok in got.items() if not ok}


def test_sentiment_gru_reads_the_issue_negations_and_trails_the_lstm_by_one() -> None:
    """Issue 15.7: the max-pooled GRU read both sentences the wrong way round. The retrained one
    gets them right and passes every sentence sentiment-lstm passes but the one its card names."""
    gru, lstm = _behaviour(MODELS / "sentiment-gru"), _behaviour(MODELS / "sentiment-lstm")
    assert gru["Not bad at all, actually one of the best comedies I have seen this year."]
    assert gru["Not good at all. Two hours of my life I will never get back."]
    assert {t for t, ok in lstm.items() if ok and not gru[t]} == {
        "I can't say I enjoyed any of it."
    }
