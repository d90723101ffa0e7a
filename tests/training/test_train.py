"""The loop's stopping rules, the best-checkpoint rule, and the run folder -> export seam."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from training import checkpoint as ck  # noqa: E402
from training.config import load_config  # noqa: E402
from training.experiment import train  # noqa: E402


def _cfg(tmp_path: Path, *extra: str):  # type: ignore[no-untyped-def]
    rng = random.Random(0)
    text = tmp_path / "t.txt"
    text.write_text("".join(rng.choice("abcab \n") for _ in range(5000)))
    return load_config(
        "smoke-char",
        [f"data.path='{text}'", "data.limit=0", "train.batch_size=4", "train.seq_len=16", *extra],
    )


def _val(run: Path) -> list[dict]:  # type: ignore[type-arg]
    recs = [json.loads(x) for x in (run / ck.METRICS).read_text().splitlines()]
    return [r for r in recs if r["kind"] == "val"]


def test_early_stopping(tmp_path: Path) -> None:
    # lr = 0: the validation loss never improves after the first evaluation
    cfg = _cfg(
        tmp_path, "optim.lr=0", "train.max_steps=100", "train.eval_every=5", "train.patience=2"
    )
    summary = train(cfg, tmp_path / "run")
    assert summary["steps"] == 15 and [r["step"] for r in _val(tmp_path / "run")] == [5, 10, 15]


def test_checkpoint_holds_the_best_evaluation(tmp_path: Path) -> None:
    cfg = _cfg(
        tmp_path,
        "train.max_steps=30",
        "train.eval_every=5",
        "optim.lr=0.05",
        "optim.warmup_steps=0",
        "optim.schedule='constant'",
    )
    train(cfg, tmp_path / "run")
    vals = _val(tmp_path / "run")
    best = min(vals, key=lambda r: r["val_loss"])
    ckpt = ck.load(tmp_path / "run")
    assert ckpt["step"] == best["step"] and ckpt["metrics"]["best_val_loss"] == best["val_loss"]
    # the saved weights really are that evaluation's: re-evaluating reproduces its loss
    from training.evaluate import evaluate_run

    rep = evaluate_run(tmp_path / "run", device="cpu")
    assert rep["nats_per_char"] == pytest.approx(best["val_loss"], rel=1e-5)


def test_time_budget_stops_and_anneals(tmp_path: Path) -> None:
    cfg = _cfg(
        tmp_path,
        "train.max_steps=100000",
        "train.max_minutes=0.02",
        "train.eval_every=0",
        "optim.warmup_steps=0",
        "optim.min_lr_ratio=0.1",
    )
    summary = train(cfg, tmp_path / "run")
    assert summary["steps"] < 100000
    last_lr = ck.load(tmp_path / "run" / ck.LAST)["optimizer"]["param_groups"][0]["lr"]
    assert last_lr == pytest.approx(cfg.optim.lr * 0.1, rel=0.05)  # annealed by the clock


def test_run_folder_exports(tmp_path: Path) -> None:
    """The seam: what train writes, training.export reads and verifies."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from service.contract import load_artifact
    from training.export import export_run

    cfg = _cfg(tmp_path, "train.max_steps=10", "train.eval_every=5")
    train(cfg, tmp_path / "run")
    manifest = export_run(tmp_path / "run", tmp_path / "art", "seam-test")
    loaded, onnx_path = load_artifact(tmp_path / "art")
    assert loaded == manifest and onnx_path.exists()
    assert manifest.training.metrics["best_val_loss"] > 0 and manifest.task == "next_token"
