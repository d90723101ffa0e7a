"""Export entry points: a model in memory (`export_model`) or a training run folder (`export_run`).

Nothing is written unless the graph passes `onnx.checker` and every check in `verify`.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import onnx
import torch

from service.contract import (
    CharTokenizerSpec,
    ModelManifest,
    SamplingDefaults,
    TrainingSummary,
    WordTokenizerSpec,
    load_manifest,
    save_artifact,
)
from training.export.graph import build_graph
from training.export.io import build_io
from training.export.quantize import StateDtype, VariantKind
from training.export.verify import verify_export
from training.model import ModelConfig, RNNModel

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
_PLACEHOLDER_SHA = "0" * 64  # replaced by save_artifact with the digest of the bytes written


def export_model(
    model: RNNModel,
    cfg: ModelConfig,
    tokenizer_spec: CharTokenizerSpec | WordTokenizerSpec,
    labels: list[str] | None,
    out_dir: Path,
    name: str,
    summary: TrainingSummary | None = None,
    version: str = "1",
    sampling: SamplingDefaults | None = None,
) -> ModelManifest:
    """Build, verify and write `out_dir/{model.onnx, manifest.json}`; return the manifest."""
    model = copy.deepcopy(model).float().cpu().eval()  # never touch the caller's (training) copy
    if model.cfg != cfg:
        raise ValueError("export_model: cfg differs from model.cfg")
    if cfg.task == "classify" and (labels is None or len(labels) != cfg.num_classes):
        raise ValueError(f"export_model: need {cfg.num_classes} labels, got {labels!r}")
    io = build_io(cfg)
    proto = build_graph(model, io)
    onnx.checker.check_model(proto, full_check=True)
    data = proto.SerializeToString()
    checks = verify_export(data, model, io)
    log.info("export checks passed: %s", checks)

    base = summary.model_dump() if summary is not None else {}
    if base.get("parameters") is None:
        base["parameters"] = model.num_parameters()
    base["model_config"] = cfg.to_dict()
    base["export_checks"] = checks
    manifest = ModelManifest(
        name=name,
        version=version,
        task=cfg.task,
        cell=cfg.cell,
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        tokenizer=tokenizer_spec,
        io=io,
        labels=labels if cfg.task == "classify" else None,
        streamable=not cfg.bidirectional,
        sampling=sampling or SamplingDefaults(),
        onnx_sha256=_PLACEHOLDER_SHA,
        training=TrainingSummary.model_validate(base),
    )
    return save_artifact(out_dir, data, manifest)


def load_run(run_dir: Path) -> tuple[RNNModel, dict[str, Any]]:
    """The model and the raw checkpoint dict of a training run folder."""
    path = run_dir / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no {CHECKPOINT_FILE}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    missing = [k for k in ("model", "model_config", "tokenizer") if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {missing}")
    cfg = ModelConfig.from_dict(ckpt["model_config"])
    model = RNNModel(cfg)
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


def _tokenizer_spec(raw: dict[str, Any]) -> CharTokenizerSpec | WordTokenizerSpec:
    if raw.get("kind") == "word":
        return WordTokenizerSpec.model_validate(raw)
    return CharTokenizerSpec.model_validate(raw)


def export_run(run_dir: Path, out_dir: Path, name: str, version: str = "1") -> ModelManifest:
    model, ckpt = load_run(run_dir)
    metrics = {
        k: float(v)
        for k, v in (ckpt.get("metrics") or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    extra = {k: ckpt[k] for k in ("device", "train_seconds") if ckpt.get(k) is not None}
    summary = TrainingSummary(
        config=ckpt.get("config") or {},
        dataset=str(ckpt.get("dataset") or ""),
        metrics=metrics,
        git_commit=ckpt.get("git_commit"),
        parameters=model.num_parameters(),
        **extra,
    )
    sampling = ckpt.get("sampling")
    return export_model(
        model,
        model.cfg,
        _tokenizer_spec(ckpt["tokenizer"]),
        ckpt.get("labels"),
        out_dir,
        name,
        summary,
        version=version,
        sampling=SamplingDefaults.model_validate(sampling) if sampling else None,
    )


def export_command(
    run_dir: Path,
    out: Path,
    name: str | None,
    version: str,
    int8: bool = False,
    int8_tolerance: float | None = None,
) -> None:
    """CLI: `rnnserve export RUN_DIR --out models/NAME [--name NAME] [--version V] [--int8]`.

    The artifact goes to `out` itself; the name defaults to the folder's name. A classifier's card
    (`out/README.md`) gets its behavioural section refreshed (`card`). With `int8`, the verified
    fp32 artifact is quantized and the variant kept only within tolerance (`variant_run`).
    """
    manifest = export_run(run_dir, out, name or out.name, version)
    checks = manifest.training.model_dump().get("export_checks", {})
    print(
        f"exported {manifest.name} v{manifest.version} -> {out} (sha256 {manifest.onnx_sha256[:12]})"
    )
    for key, value in checks.items():
        print(f"  {key}: {value:.2e}")
    from training.export.card import update_card

    behaviour = update_card(out)  # the card's behavioural section, from the graph just written
    if behaviour is not None:
        print(f"  behaviour: {behaviour['passed']}/{behaviour['total']} passed (README.md)")
    if int8:
        quantize_command(out, int8_tolerance)


def quantize_command(
    artifact_dir: Path,
    tolerance: float | None = None,
    kind: VariantKind = "int8",
    state_dtype: StateDtype = "float32",
) -> None:
    """CLI: `rnnserve quantize MODEL_DIR [--kind int8|fp16] [--tolerance X] [--state-dtype D]`:
    add (or refuse) a variant of an exported model, judged on its validation data; prints both
    figures."""
    from training.export.variant_run import default_tolerance, variant_for_artifact

    r = variant_for_artifact(artifact_dir, kind, tolerance, state_dtype=state_dtype)
    task = load_manifest(artifact_dir).task
    tol = default_tolerance(task) if tolerance is None else tolerance
    metric = "val_loss_nats" if task == "next_token" else "val_accuracy"
    verdict = f"recorded {r.variant.file}" if r.variant else "refused (fp32 only)"
    print(
        f"  {kind} {metric}: fp32 {r.fp32:.4f}  {kind} {r.value:.4f}  (tolerance {tol:g}): {verdict}"
    )
