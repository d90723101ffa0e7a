"""Resume == uninterrupted: N steps in one go equal k steps, a restart from last.pt, N - k more."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from training import checkpoint as ck  # noqa: E402
from training.config import load_config  # noqa: E402
from training.experiment import train  # noqa: E402

WORDS = [
    "good",
    "great",
    "fine",
    "bad",
    "awful",
    "poor",
    "film",
    "plot",
    "actor",
    "scene",
    "the",
    "a",
    "and",
    "but",
    "very",
    "not",
]


def _text(path: Path) -> Path:
    rng = random.Random(0)
    path.write_text("".join(rng.choice("abcdefgh \n") for _ in range(6000)))
    return path


def _table(path: Path) -> Path:
    rng = random.Random(0)
    with path.open("w") as f:
        for _ in range(120):
            words = [rng.choice(WORDS) for _ in range(rng.randint(3, 30))]
            label = "pos" if words.count("good") >= words.count("bad") else "neg"
            f.write(json.dumps({"text": " ".join(words), "label": label}) + "\n")
    return path


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return ck.load(run / ck.LAST)["model"]


def _run_split(cfg, tmp: Path, k: int) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    whole, split = tmp / "whole", tmp / "split"
    train(cfg, whole)
    train(cfg, split, stop_after=k)
    assert ck.load(split / ck.LAST)["step"] == k
    train(cfg, split, resume=split / ck.LAST)
    return whole, split


def test_lm_resume_mid_epoch_carries_state(tmp_path: Path) -> None:
    cfg = load_config(
        "smoke-char",
        [
            f"data.path='{_text(tmp_path / 't.txt')}'",
            "data.limit=0",
            "train.max_steps=14",
            "train.eval_every=5",
            "model.dropout=0.3",
            "model.num_layers=2",
            "optim.weight_noise=0.01",
            "train.batch_size=4",
            "train.seq_len=16",
        ],
    )
    whole, split = _run_split(cfg, tmp_path, k=7)  # 7 is mid-epoch and not an eval step
    a, b = _weights(whole), _weights(split)
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    ra = [json.loads(x) for x in (whole / ck.METRICS).read_text().splitlines()]
    rb = [json.loads(x) for x in (split / ck.METRICS).read_text().splitlines()]
    volatile = ("seconds", "tokens_per_s")  # wall-clock fields differ between the two runs
    assert [{k: v for k, v in r.items() if k not in volatile} for r in ra] == [
        {k: v for k, v in r.items() if k not in volatile} for r in rb
    ]


def test_classify_resume_across_an_epoch_boundary(tmp_path: Path) -> None:
    cfg = load_config(
        "smoke-sentiment",
        [
            "data.dataset='table'",
            f"data.path='{_table(tmp_path / 'd.jsonl')}'",
            "data.limit=0",
            "train.batch_size=16",
            "train.epochs=3",
            "model.dropout=0.3",
            "optim.schedule='plateau'",
        ],
    )  # 96 training rows -> 6 steps per epoch; stop at 9 = mid second epoch
    whole, split = _run_split(cfg, tmp_path, k=9)
    a, b = _weights(whole), _weights(split)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert ck.load(whole / ck.CHECKPOINT)["metrics"] == ck.load(split / ck.CHECKPOINT)["metrics"]


def test_last_pt_is_a_typed_resume_state_over_the_same_keys(tmp_path: Path) -> None:
    """last.pt keeps its plain-dict layout (older files load), and every resume key it has
    is a `ResumeState` field: the typed state and the file cannot drift apart."""
    from dataclasses import fields

    cfg = load_config("smoke-char", ["train.max_steps=6", "train.eval_every=3"])
    train(cfg, tmp_path / "run")
    raw = ck.load(tmp_path / "run" / ck.LAST)
    state = ck.ResumeState.from_dict(raw)
    assert state.step == 6 and state.best is not None and state.history
    names = {f.name for f in fields(ck.ResumeState)}
    assert names <= raw.keys()
    assert state.to_dict().keys() == names
    meta = {"model_config", "config", "labels", "tokenizer", "dataset", "git_commit"}
    assert raw.keys() - names <= meta | {"parameters", "device"}
