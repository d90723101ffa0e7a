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
