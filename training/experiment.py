"""Train one experiment: `train(cfg)` -> run folder (see training/checkpoint.py for its files).
This module sets a run up and sums it up; `training/trainer.py` holds the loop.

The loop, per step: forward + loss (autocast on CUDA) -> backward -> clip by value and/or norm
-> optimizer step -> LR schedule step. Evaluation every `train.eval_every` steps (or once per
epoch); the best validation metric's weights go to checkpoint.pt, the latest state to last.pt.

Budgets: `train.epochs` / `train.max_steps`, and optionally `train.max_minutes` of wall clock;
with a time budget the cosine schedule anneals by whichever runs out first (then, of course, the
trajectory depends on the machine's speed and resume is no longer bit-exact).

Fine-tuning (`train.init_from = RUN_DIR`): the run starts from that run's best weights and
uses its tokenizer; the architecture and the labels must match (checked), the rest of the
config (data, dropout, optimiser, budget) is this run's own.

Exact resume: the data order is a pure function of (seed, epoch) and the position in the epoch;
last.pt stores that position together with the model, optimizer, schedule, AMP scaler, every RNG
and the carried LM state, so a resumed run follows the uninterrupted trajectory bit for bit
(on the same device and thread count).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from training import checkpoint as ck
from training.config import ExperimentConfig, to_toml
from training.plots import learning_curve
from training.runtime import describe_device, pick_device, seed_everything
from training.trainer import Trainer


def build_task(cfg: ExperimentConfig, tokenizer: Any = None) -> Any:
    """Load the data and the tokenizer (built from the training split unless given)."""
    from training.data.for_config import labelled_splits, text_splits

    if cfg.task == "next_token":
        from training.loop_lm import LMTask

        return LMTask(cfg, text_splits(cfg), tokenizer)
    from training.loop_classify import ClassifyTask

    return ClassifyTask(cfg, labelled_splits(cfg), tokenizer)


def model_config(cfg: ExperimentConfig, task: Any) -> Any:
    from training.model import ModelConfig

    fields = dataclasses.asdict(cfg.model) | task.model_fields()
    return ModelConfig.from_dict(fields)


def train(
    cfg: ExperimentConfig,
    run_dir: Path | None = None,
    *,
    resume: Path | None = None,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Run (or resume) an experiment; returns the summary. `stop_after` ends the process after that
    many total steps as if interrupted (last.pt written), which is how the resume test splits a run."""
    from training.model import RNNModel

    run_dir = Path(run_dir) if run_dir is not None else cfg.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    tc = cfg.train
    if tc.num_threads > 0:
        torch.set_num_threads(tc.num_threads)
    device = pick_device(tc.device)
    seed_everything(cfg.seed)

    raw = ck.load(resume, "cpu") if resume is not None else None
    # a resumed fine-tune restarts from its own last.pt, not from the run it started from
    init = ck.load(Path(tc.init_from), "cpu") if tc.init_from and raw is None else None
    source = raw if raw is not None else init
    task = build_task(cfg, ck.tokenizer_spec(source) if source is not None else None)
    mcfg = model_config(cfg, task)
    model = RNNModel(mcfg).to(device)
    if init is not None:
        start_from(model, mcfg, task, init, tc.init_from)
    state = ck.ResumeState.from_dict(raw) if raw is not None else None
    (run_dir / ck.CONFIG).write_text(to_toml(cfg.to_dict()), encoding="utf-8")
    trainer = Trainer(cfg, run_dir, task, model, mcfg, device, state)
    interrupted = trainer.run(stop_after)
    c = trainer.c
    summary = write_summary(
        run_dir,
        cfg,
        mcfg,
        trainer.n_params,
        c.best_metrics,
        trainer.log.records,
        c.step,
        trainer.per_epoch,
        c.seconds,
        device,
        c.work_tokens,
        c.work_seconds,
    )
    if not interrupted and (run_dir / ck.CHECKPOINT).exists():
        # the best checkpoint learns the total training time once the run is over
        best_ck = ck.load(run_dir / ck.CHECKPOINT)
        best_ck["train_seconds"] = c.seconds
        ck.atomic_save(best_ck, run_dir / ck.CHECKPOINT)
    return summary


# what must agree between a run and the run it fine-tunes (dropout and the like may differ)
ARCHITECTURE = (
    "task",
    "cell",
    "vocab_size",
    "embed_dim",
    "hidden_size",
    "num_layers",
    "bidirectional",
    "num_classes",
    "pooling",
    "tie_weights",
)


def start_from(model: Any, mcfg: Any, task: Any, init: dict[str, Any], where: str) -> None:
    """Load a finished run's best weights into `model` (fine-tuning: `train.init_from`)."""
    theirs, ours = init["model_config"], mcfg.to_dict()
    differ = [k for k in ARCHITECTURE if theirs.get(k) != ours.get(k)]
    if differ:
        pairs = ", ".join(f"{k}: {theirs.get(k)!r} there, {ours.get(k)!r} here" for k in differ)
        raise ValueError(f"train.init_from={where}: the architecture differs ({pairs})")
    labels = getattr(task, "labels", None)
    if labels is not None and list(init.get("labels") or []) != list(labels):
        raise ValueError(
            f"train.init_from={where}: its labels {init.get('labels')} are not this data's "
            f"{labels} (same names, same order)"
        )
    model.load_state_dict(init["model"])


def write_summary(
    run_dir: Path,
    cfg: ExperimentConfig,
    mcfg: Any,
    n_params: int,
    best: dict[str, float],
    records: list[dict[str, Any]],
    step: int,
    per_epoch: int,
    seconds: float,
    device: torch.device,
    work_tokens: int,
    work_seconds: float,
) -> dict[str, Any]:
    """Headline numbers. `train_seconds` is wall clock (evaluations included); `seconds_per_epoch`
    and `tokens_per_s` count training steps only, so cells compare on their own speed."""
    epochs = step / per_epoch
    summary = {
        "name": cfg.name,
        "task": cfg.task,
        "cell": mcfg.cell,
        "parameters": n_params,
        "steps": step,
        "epochs": round(epochs, 3),
        "train_seconds": round(seconds, 1),
        "seconds_per_epoch": round(work_seconds / epochs, 1) if step else None,
        "tokens_per_s": round(work_tokens / work_seconds, 1) if work_seconds > 0 else None,
        "device": describe_device(device),
        "run_dir": str(run_dir),
        **best,
    }
    ck.write_json(run_dir / ck.SUMMARY, summary)
    learning_curve(records, run_dir / ck.CURVE, f"{cfg.name} ({mcfg.cell}, {n_params:,} params)")
    return summary
