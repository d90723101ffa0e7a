"""The int8 variant: recorded with its metric when within tolerance, refused otherwise."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime.quantization")

from service.contract import load_artifact, tokenizer_from_spec
from training.export.quantize import add_int8_variant, classify_accuracy, lm_loss
from training.export.verify import make_session, run_graph

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "models"
TEXT = "ROMEO:\nWhat say you, my lord? I would the night were come.\nJULIET:\nGood night, good night!\n"


def _copy(name: str, tmp: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp / name))


def test_int8_lm_variant_is_recorded(tmp_path: Path) -> None:
    art = _copy("tiny-char-lstm", tmp_path)
    m, _ = load_artifact(art)
    ids = tokenizer_from_spec(m.tokenizer).encode(TEXT * 2)
    v = add_int8_variant(
        art, lm_loss(ids, streams=4), "val_loss_nats", 0.05, higher_is_better=False
    )
    assert v is not None and v.value - v.fp32_value <= 0.05
    m2, path = load_artifact(art, variant="int8")  # sha256 checked
    assert m2.variants == [v] and path.name == v.file
    assert m2.onnx_sha256 == m.onnx_sha256  # the fp32 graph is untouched
    assert path.stat().st_size < (art / m.onnx_file).stat().st_size / 2
    checks = m2.training.model_dump()["int8_checks"]
    assert checks["max_abs_diff_vs_fp32"] < 0.5
    sess = make_session(path.read_bytes())
    assert [i.name for i in sess.get_inputs()] == m.io.input_names()


def test_int8_classifier_agreement_and_refusal(tmp_path: Path) -> None:
    art = _copy("tiny-sentiment-lstm", tmp_path)
    m, path = load_artifact(art)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(2, 200, rng.integers(1, 30)).tolist() for _ in range(200)]
    fp32 = make_session(path.read_bytes())
    labels = [  # the fp32 predictions: int8 "accuracy" is then its agreement with fp32
        int(run_graph(fp32, m.io, np.array([s]), np.array([len(s)]), m.init_states(1))[0].argmax())
        for s in seqs
    ]
    v = add_int8_variant(art, classify_accuracy(seqs, labels), "fp32_agreement", 0.05)
    assert v is not None and v.fp32_value == 1.0 and v.value >= 0.95
    art2 = _copy("tiny-sentiment-gru", tmp_path)
    flipped = [1 - y for y in labels]  # a metric int8 cannot keep within a negative tolerance
    assert add_int8_variant(art2, classify_accuracy(seqs, flipped), "acc", -1.0) is None
    assert load_artifact(art2)[0].variants == []
    assert not (art2 / "model.int8.onnx").exists()
