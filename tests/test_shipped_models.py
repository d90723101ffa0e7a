"""The shipped models in models/ load, match their checksums and stream exactly (no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.contract import ModelManifest, load_artifact, tokenizer_from_spec

MODELS = Path(__file__).resolve().parents[1] / "models"
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
    """Each shipped variant: checksum, the fp32 io contract, outputs close to the fp32 graph's
    (int8 approximately, fp16 closely), its recorded metric within its tolerance."""
    manifest, base = load_artifact(path)
    _, graph = load_artifact(path, variant=variant)  # sha256 checked
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
    b, _ = _run(ort.InferenceSession(str(graph)), manifest, ids, manifest.init_states(1))
    pa, pb = (np.exp(x - x.max()) / np.exp(x - x.max()).sum() for x in (a[0], b[0]))
    assert np.abs(pa - pb).max() < (0.01 if variant == "fp16" else 0.1)
