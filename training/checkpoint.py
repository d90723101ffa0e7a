"""The run folder: what `train` writes and what `evaluate` / `sample` / export read.

    RUN_DIR/checkpoint.pt     best-by-validation weights + everything needed to rebuild the model
    RUN_DIR/last.pt           the latest training state, for exact resume (optimizer, schedule,
                              RNG, data position, carried LM state)
    RUN_DIR/config.toml       the full experiment config
    RUN_DIR/metrics.jsonl     one JSON record per logged train step / evaluation
    RUN_DIR/learning_curve.png
    RUN_DIR/summary.json      headline numbers

checkpoint.pt keys (the seam with export): model, model_config, config, labels, tokenizer,
metrics, dataset, git_commit, parameters, device, train_seconds, step, epoch.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from service.contract.manifest import CharTokenizerSpec, WordTokenizerSpec

CHECKPOINT = "checkpoint.pt"
LAST = "last.pt"
CONFIG = "config.toml"
METRICS = "metrics.jsonl"
CURVE = "learning_curve.png"
SUMMARY = "summary.json"


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves half a checkpoint."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load checkpoint.pt / last.pt (a run folder means its checkpoint.pt)."""
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    # our own files: they hold numpy RNG state and plain dicts, not just tensors
    return torch.load(path, map_location=map_location, weights_only=False)  # type: ignore[no-any-return]


def tokenizer_spec(ckpt: dict[str, Any]) -> CharTokenizerSpec | WordTokenizerSpec:
    raw = ckpt["tokenizer"]
    if raw.get("kind") == "word":
        return WordTokenizerSpec.model_validate(raw)
    return CharTokenizerSpec.model_validate(raw)


def rebuild_model(ckpt: dict[str, Any], device: str | torch.device = "cpu") -> Any:
    """The trained RNNModel in eval mode."""
    from training.model import ModelConfig, RNNModel

    model = RNNModel(ModelConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


@dataclass
class ResumeState:
    """What last.pt holds for an exact resume, typed (on disk it stays a plain dict with these
    keys beside the run's metadata, so older last.pt files load unchanged)."""

    model: dict[str, Any]
    optimizer: dict[str, Any]
    schedule: dict[str, Any]
    scaler: dict[str, Any]
    task: dict[
        str, Any
    ]  # the data position's carried state (LM hidden state), or {"carried": None}
    rng: dict[str, Any]
    step: int
    epoch: int
    pos: int  # steps into `epoch`
    train_seconds: float
    best: float | None  # the best validation metric so far
    best_metrics: dict[str, float]
    bad_evals: int  # evaluations since the best (early stopping)
    history: list[dict[str, Any]]  # metrics.jsonl's records
    running_loss: tuple[float, int]  # (sum, count) of the train loss since the last log line
    work: tuple[int, float]  # (tokens, seconds) of training steps only

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ResumeState:
        return cls(**{f.name: raw[f.name] for f in fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
