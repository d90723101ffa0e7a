"""`rnnserve export RUN --int8` / `rnnserve quantize MODEL_DIR [--kind int8|fp16]`: add a variant,
judged on the model's own validation data.

The data is rebuilt from the training config saved in the manifest (`training.config`, the run's
config verbatim) exactly as `rnnserve evaluate` does
(`training.evaluate.validation_text` / `validation_examples`). Default tolerances:

* next_token: validation loss may rise by at most 0.02 nats/char, measured on the first
  `LM_CHARS` characters of the validation split, cut into `LM_STREAMS` streams fed one token per
  call (the whole 111k-char Tiny Shakespeare split one step at a time takes too long on a CPU);
* classify: validation accuracy may drop by at most 0.005 (0.5 percentage points), on the whole
  validation split.

What was measured is stored in the manifest's `training.int8_checks.evaluated_on`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.contract import ModelManifest, load_artifact, tokenizer_from_spec
from training.config import config_from_dict
from training.evaluate import VALIDATION, classify_inputs, validation_examples, validation_text
from training.export.quantize import (
    StateDtype,
    VariantKind,
    VariantOutcome,
    classify_accuracy,
    lm_loss,
    try_variant,
)

LM_TOLERANCE = 0.02  # nats/char
CLASSIFY_TOLERANCE = 0.005  # accuracy, i.e. 0.5 percentage points
LM_CHARS = 20_000
LM_STREAMS = 16


def default_tolerance(task: str) -> float:
    return LM_TOLERANCE if task == "next_token" else CLASSIFY_TOLERANCE


def variant_for_artifact(
    artifact_dir: Path,
    kind: VariantKind = "int8",
    tolerance: float | None = None,
    lm_chars: int = LM_CHARS,
    state_dtype: StateDtype = "float32",
) -> VariantOutcome:
    """Convert `artifact_dir`'s graph to `kind` and keep it if its validation metric holds: works
    on any exported model (the shipped ones included) without its training run."""
    manifest, _ = load_artifact(artifact_dir)
    cfg = config_from_dict(manifest.training.config)
    tol = default_tolerance(manifest.task) if tolerance is None else tolerance
    if manifest.task == "next_token":
        return _lm(kind, cfg, manifest, artifact_dir, tol, lm_chars, state_dtype)
    examples = validation_examples(cfg)
    labels = list(manifest.labels or [])
    xs, ys = classify_inputs(cfg, manifest.tokenizer, labels, examples)
    on: dict[str, Any] = {"data": VALIDATION, "examples": len(xs), "max_len": cfg.data.max_len}
    acc = classify_accuracy(xs, ys)
    return try_variant(kind, artifact_dir, acc, "val_accuracy", tol, True, on, state_dtype)


def _lm(
    kind: VariantKind,
    cfg: Any,
    manifest: ModelManifest,
    artifact_dir: Path,
    tol: float,
    lm_chars: int,
    state_dtype: StateDtype,
) -> VariantOutcome:
    text = validation_text(cfg)
    text = text[:lm_chars] if lm_chars else text  # 0: the whole split
    ids = tokenizer_from_spec(manifest.tokenizer).encode(text)
    streams = max(1, min(LM_STREAMS, (len(ids) - 1) // 64))  # at least 64 steps per stream
    on: dict[str, Any] = {
        "data": f"first {len(text):,} characters of the {VALIDATION}",
        "characters": len(text),
        "streams": streams,
        "steps_per_stream": (len(ids) - 1) // streams,
    }
    loss = lm_loss(ids, streams)
    return try_variant(kind, artifact_dir, loss, "val_loss_nats", tol, False, on, state_dtype)
