"""The int8 variant: recorded with its metric when within tolerance, refused otherwise."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime.quantization")

from typer.testing import CliRunner

from service.contract import load_artifact, tokenizer_from_spec
from training.cli import train_app
from training.config import DEFAULT_DATA_ROOT
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


needs_data = pytest.mark.skipif(
    not (DEFAULT_DATA_ROOT / "tinyshakespeare" / "input.txt").exists(),
    reason="shared datasets absent",
)


def _train(tmp: Path, config: str, *sets: str) -> Path:
    run = tmp / "run"
    res = CliRunner().invoke(train_app, ["train", config, "--out", str(run), *sets])
    assert res.exit_code == 0, res.output
    return run


@needs_data
def test_export_cli_int8_on_the_runs_validation_data(tmp_path: Path) -> None:
    run = _train(tmp_path, "smoke-char", "--set", "train.max_steps=20")
    out = tmp_path / "models" / "tiny"
    res = CliRunner().invoke(train_app, ["export", str(run), "--out", str(out), "--int8"])
    assert res.exit_code == 0, res.output
    assert "int8 val_loss_nats: fp32" in res.output and "recorded model.int8.onnx" in res.output
    m = load_artifact(out, variant="int8")[0]  # the variant's sha256 checked
    (v,) = m.variants
    assert v.metric == "val_loss_nats" and v.tolerance == 0.02
    assert v.value - v.fp32_value <= 0.02
    on = m.training.model_dump()["int8_checks"]["evaluated_on"]
    assert on["characters"] == 2000 and on["streams"] == 16  # smoke-char: 10 % of 20,000 chars
    assert "validation split" in on["data"]

    again = tmp_path / "models" / "refused"  # a tolerance nothing can meet: fp32 only
    args = ["export", str(run), "--out", str(again), "--int8", "--int8-tolerance", "-1"]
    res = CliRunner().invoke(train_app, args)
    assert res.exit_code == 0 and "refused (fp32 only)" in res.output, res.output
    assert load_artifact(again)[0].variants == [] and not (again / "model.int8.onnx").exists()


@needs_data
def test_export_cli_int8_classifier(tmp_path: Path) -> None:
    run = _train(tmp_path, "smoke-sentiment")
    out = tmp_path / "models" / "cls"
    res = CliRunner().invoke(train_app, ["export", str(run), "--out", str(out), "--int8"])
    assert res.exit_code == 0, res.output
    assert "int8 val_accuracy: fp32" in res.output, res.output
    m = load_artifact(out)[0]
    if m.variants:  # within 0.5 points of fp32 on the validation split
        assert m.variants[0].metric == "val_accuracy" and m.variants[0].tolerance == 0.005
        assert m.training.model_dump()["int8_checks"]["evaluated_on"]["examples"] > 0


@needs_data
def test_quantize_cli_needs_only_the_exported_artifact(tmp_path: Path) -> None:
    run = _train(tmp_path, "smoke-char", "--set", "train.max_steps=20")
    out = tmp_path / "models" / "tiny"
    assert CliRunner().invoke(train_app, ["export", str(run), "--out", str(out)]).exit_code == 0
    shutil.rmtree(run)  # the shipped models have no run folder either
    res = CliRunner().invoke(train_app, ["quantize", str(out)])
    assert res.exit_code == 0, res.output
    assert "recorded model.int8.onnx" in res.output
    (v,) = load_artifact(out, variant="int8")[0].variants
    assert v.metric == "val_loss_nats" and v.value - v.fp32_value <= 0.02


@needs_data
def test_quantize_cli_fp16_variant_keeps_the_io_contract(tmp_path: Path) -> None:
    run = _train(tmp_path, "smoke-char", "--set", "train.max_steps=20")
    out = tmp_path / "models" / "tiny"
    assert CliRunner().invoke(train_app, ["export", str(run), "--out", str(out)]).exit_code == 0
    res = CliRunner().invoke(train_app, ["quantize", str(out), "--kind", "fp16"])
    assert res.exit_code == 0, res.output
    assert "fp16 val_loss_nats" in res.output and "recorded model.fp16.onnx" in res.output
    m, path = load_artifact(out, variant="fp16")
    (v,) = m.variants
    assert v.name == "fp16" and abs(v.value - v.fp32_value) <= 0.02
    checks = m.training.model_dump()["fp16_checks"]
    assert checks["max_abs_diff_vs_fp32"] < 0.1  # half precision, not a different model
    sess = make_session(path.read_bytes())
    # float32 in and out (keep_io_types): the server's arrays and check_graph are unchanged
    assert [i.type for i in sess.get_inputs()][2:] == ["tensor(float)"] * len(m.io.states)
    bad = CliRunner().invoke(train_app, ["quantize", str(out), "--kind", "bf16"])
    assert bad.exit_code == 2


def test_fp16_variant_with_its_state_in_half_precision(tmp_path: Path) -> None:
    """`rnnserve quantize --kind fp16 --state-dtype float16`: the graph's state inputs and
    outputs become float16 (tokens, lengths and logits stay as they were), the variant records
    it, it is judged on a manifest whose state is float16, and it loads served that way."""
    pytest.importorskip("onnxruntime.transformers.float16")
    from training.export.quantize import try_variant

    art = _copy("tiny-char-lstm", tmp_path)
    m, _ = load_artifact(art)
    ids = tokenizer_from_spec(m.tokenizer).encode(TEXT * 2)
    r = try_variant(
        "fp16", art, lm_loss(ids, streams=4), "val_loss_nats", 0.05, False, None, "float16"
    )
    assert r.variant is not None and r.variant.state_dtype == "float16"
    served, path = load_artifact(art, variant="fp16")
    assert [s.dtype for s in served.io.states] == ["float16", "float16"]
    assert load_artifact(art)[0].io == m.io  # the fp32 graph's contract is untouched
    sess = make_session(path.read_bytes())
    types = {i.name: i.type for i in [*sess.get_inputs(), *sess.get_outputs()]}
    assert types[m.io.tokens] == "tensor(int64)" and types[m.io.logits] == "tensor(float)"
    assert {types[s.input] for s in m.io.states} == {"tensor(float16)"}
    lengths = np.array([len(ids)], np.int32)
    logits, states = run_graph(sess, served.io, np.array([ids]), lengths, served.init_states(1))
    assert np.isfinite(logits).all() and all(s.dtype == np.float16 for s in states)


@pytest.mark.parametrize(
    "args",
    [["--kind", "int8", "--state-dtype", "float16"], ["--kind", "fp16", "--state-dtype", "bf16"]],
)
def test_a_state_dtype_only_fp16_can_take_is_refused(tmp_path: Path, args: list[str]) -> None:
    art = _copy("tiny-char-lstm", tmp_path)
    res = CliRunner().invoke(train_app, ["quantize", str(art), *args])
    assert res.exit_code == 2 and "--state-dtype" in res.output
    assert load_artifact(art)[0].variants == []
