"""CLI smoke runs on a slice of the shared data (skipped where ../shared/datasets is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from training.cli import train_app
from training.config import DEFAULT_DATA_ROOT

runner = CliRunner()
needs_data = pytest.mark.skipif(
    not (DEFAULT_DATA_ROOT / "tinyshakespeare" / "input.txt").exists(),
    reason="shared datasets absent",
)


def test_import_needs_no_torch() -> None:
    import subprocess
    import sys

    code = "import sys, training.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_config_errors_exit_2_naming_the_key(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    res = runner.invoke(train_app, ["train", "smoke-char", "model.hiden=3", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "model.hiden" in res.output


@needs_data
def test_train_evaluate_sample_char(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    run = tmp_path / "run"
    res = runner.invoke(
        train_app,
        [
            "train",
            "smoke-char",
            "--out",
            str(run),
            "--model.hidden_size=24",
            "--set",
            "train.max_steps=20",
        ],
    )
    assert res.exit_code == 0, res.output
    for f in (
        "checkpoint.pt",
        "last.pt",
        "metrics.jsonl",
        "learning_curve.png",
        "summary.json",
        "config.toml",
    ):
        assert (run / f).stat().st_size > 0, f
    assert (run / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import torch

    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    assert {
        "model",
        "model_config",
        "config",
        "labels",
        "tokenizer",
        "metrics",
        "dataset",
        "git_commit",
        "parameters",
        "device",
        "train_seconds",
    } <= ckpt.keys()
    assert ckpt["model_config"]["hidden_size"] == 24 and ckpt["config"]["train"]["max_steps"] == 20
    assert ckpt["tokenizer"]["kind"] == "char" and ckpt["labels"] is None
    assert set(ckpt["metrics"]) >= {"best_val_loss", "best_val_bpc"}
    kinds = {json.loads(x)["kind"] for x in (run / "metrics.jsonl").read_text().splitlines()}
    assert kinds == {"train", "val"}

    res = runner.invoke(train_app, ["evaluate", str(run), "--json", str(tmp_path / "e.json")])
    assert res.exit_code == 0 and "bits/char" in res.output
    ev = json.loads((tmp_path / "e.json").read_text())
    assert ev["nats_per_char"] == pytest.approx(ckpt["metrics"]["best_val_loss"], rel=1e-5)

    res = runner.invoke(
        train_app,
        ["sample", str(run), "--prompt", "ROMEO:", "--length", "40", "--seed", "3", "--top-k", "5"],
    )
    assert res.exit_code == 0 and res.output.startswith("ROMEO:") and len(res.output) >= 46
    again = runner.invoke(
        train_app,
        ["sample", str(run), "--prompt", "ROMEO:", "--length", "40", "--seed", "3", "--top-k", "5"],
    )
    assert again.output == res.output  # seeded


@needs_data
def test_train_and_evaluate_sentiment(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    run = tmp_path / "run"
    res = runner.invoke(train_app, ["train", "smoke-sentiment", "--out", str(run)])
    assert res.exit_code == 0, res.output
    import torch

    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    assert ckpt["labels"] == ["negative", "positive"] and ckpt["tokenizer"]["kind"] == "word"
    assert "best_val_accuracy" in ckpt["metrics"]
    res = runner.invoke(train_app, ["evaluate", str(run)])
    assert res.exit_code == 0 and "confusion" in res.output and "accuracy" in res.output
    res = runner.invoke(train_app, ["sample", str(run), "--prompt", "a great film"])
    assert res.exit_code == 0 and set(json.loads(res.output)) == {"negative", "positive"}


@needs_data
def test_compare_writes_table_and_overlay(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "cmp"
    res = runner.invoke(
        train_app,
        [
            "compare",
            "smoke-char",
            "--out",
            str(out),
            "--steps",
            "6",
            "--cells",
            "lstm,gru,rnn,peephole_lstm",
            "train.eval_every=3",
        ],
    )
    assert res.exit_code == 0, res.output
    table = (out / "compare.md").read_text()
    assert all(c in table for c in ("lstm", "gru", "rnn", "peephole_lstm"))
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    rows = (out / "compare.csv").read_text().splitlines()
    assert len(rows) == 5
    params = [int(r.split(",")[2]) for r in rows[1:]]
    assert max(params) / min(params) < 1.15  # matched parameter counts


def test_data_download_unknown_name() -> None:
    res = runner.invoke(train_app, ["data", "download", "mnist", "--to", "/tmp/x"])
    assert res.exit_code == 1 and "unknown dataset" in res.output


@needs_data
def test_reproduce_trains_a_pretrained_model_and_exports_each(tmp_path: Path) -> None:
    """`rnnserve reproduce` at smoke size: sentiment-sst2 gets its pretraining run first (and
    starts from it), and every model lands in --models as a servable artifact."""
    pytest.importorskip("torch")
    runs, models = tmp_path / "runs", tmp_path / "models"
    smoke = ["train.max_steps=2", "train.eval_every=2", "data.limit=200", "train.epochs=1"]
    args = ["reproduce", "--only", "sentiment-sst2,sentiment-lstm-large"]
    args += ["--runs", str(runs), "--models", str(models)]
    for s in smoke:
        args += ["--set", s]
    res = runner.invoke(train_app, args)
    assert res.exit_code == 0, res.output
    assert (runs / "imdb-pretrain" / "checkpoint.pt").is_file()
    config = (runs / "sentiment-sst2" / "config.toml").read_text()
    assert f'init_from = "{runs / "imdb-pretrain"}"' in config, config
    for name in ("sentiment-sst2", "sentiment-lstm-large"):
        manifest = json.loads((models / name / "manifest.json").read_text())
        assert manifest["name"] == name and (models / name / "model.onnx").is_file()
