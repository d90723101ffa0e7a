"""Train one experiment: `train(cfg)` -> run folder (see training/checkpoint.py for its files).

The loop, per step: forward + loss (autocast on CUDA) -> backward -> clip by value and/or norm
-> optimizer step -> LR schedule step. Evaluation every `train.eval_every` steps (or once per
epoch); the best validation metric's weights go to checkpoint.pt, the latest state to last.pt.

Budgets: `train.epochs` / `train.max_steps`, and optionally `train.max_minutes` of wall clock;
with a time budget the cosine schedule anneals by whichever runs out first (then, of course, the
trajectory depends on the machine's speed and resume is no longer bit-exact).

Exact resume: the data order is a pure function of (seed, epoch) and the position in the epoch;
last.pt stores that position together with the model, optimizer, schedule, AMP scaler, every RNG
and the carried LM state, so a resumed run follows the uninterrupted trajectory bit for bit
(on the same device and thread count).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import torch

from training import checkpoint as ck
from training.config import ExperimentConfig, to_toml
from training.optim import Schedule, build_optimizer, clip_gradients, weight_noise
from training.plots import learning_curve
from training.progress import MetricsLog, Progress
from training.runtime import (
    describe_device,
    git_commit,
    pick_device,
    rng_state,
    seed_everything,
    set_rng_state,
)


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


def _better(metric: str, new: float, best: float | None) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(new)
    return new > best if metric == "val_accuracy" else new < best


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
    tc, oc = cfg.train, cfg.optim
    if tc.num_threads > 0:
        torch.set_num_threads(tc.num_threads)
    device = pick_device(tc.device)
    amp = tc.amp and device.type == "cuda"
    seed_everything(cfg.seed)

    state = ck.load(resume, "cpu") if resume is not None else None
    task = build_task(cfg, ck.tokenizer_spec(state) if state else None)
    mcfg = model_config(cfg, task)
    model = RNNModel(mcfg).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    opt = build_optimizer(model, oc)
    per_epoch = task.steps_per_epoch()
    total = tc.max_steps if tc.max_steps > 0 else tc.epochs * per_epoch
    metric = "val_accuracy" if cfg.task == "classify" else "val_loss"
    sched = Schedule(opt, oc, total, "max" if metric == "val_accuracy" else "min")
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    step, epoch, pos, seconds = 0, 0, 0, 0.0
    best: float | None = None
    best_metrics: dict[str, float] = {}
    bad_evals = 0
    history: list[dict[str, Any]] = []
    run_loss, run_n = 0.0, 0  # running mean of the train loss between log lines
    work_tokens, work_seconds = 0, 0.0  # training steps only (no evaluation): for tokens/s
    last_val: dict[str, str] = {}  # the latest validation metric, shown on the progress bar
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["schedule"])
        scaler.load_state_dict(state["scaler"])
        task.load_state_dict(state["task"], device)
        set_rng_state(state["rng"])
        step, epoch, pos, seconds = (
            state["step"],
            state["epoch"],
            state["pos"],
            state["train_seconds"],
        )
        best, best_metrics, bad_evals = state["best"], state["best_metrics"], state["bad_evals"]
        history = state["history"]
        run_loss, run_n = state["running_loss"]
        work_tokens, work_seconds = state["work"]

    (run_dir / ck.CONFIG).write_text(to_toml(cfg.to_dict()), encoding="utf-8")
    log = MetricsLog(run_dir / ck.METRICS, history)
    bar = Progress(total, step, tc.progress, cfg.name)
    bar.note(
        f"[{cfg.name}] {mcfg.cell} {n_params:,} params on {describe_device(device)}; "
        f"{per_epoch} steps/epoch, {total} steps; data: {task.dataset}"
    )
    params = [p for p in model.parameters() if p.requires_grad]
    commit = git_commit()

    def meta() -> dict[str, Any]:
        return {
            "model_config": mcfg.to_dict(),
            "config": cfg.to_dict(),
            "labels": task.labels,
            "tokenizer": task.tokenizer.model_dump(mode="json"),
            "dataset": task.dataset,
            "git_commit": commit,
            "parameters": n_params,
            "device": describe_device(device),
        }

    def save_last() -> None:
        e, p = (epoch + 1, 0) if pos >= per_epoch else (epoch, pos)
        ck.atomic_save(
            meta()
            | {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "schedule": sched.state_dict(),
                "scaler": scaler.state_dict(),
                "task": task.state_dict() if p > 0 else {"carried": None},
                "rng": rng_state(),
                "step": step,
                "epoch": e,
                "pos": p,
                "train_seconds": seconds,
                "best": best,
                "best_metrics": best_metrics,
                "bad_evals": bad_evals,
                "history": log.records,
                "running_loss": (run_loss, run_n),
                "work": (work_tokens, work_seconds),
            },
            run_dir / ck.LAST,
        )

    def evaluate() -> bool:
        """Validate, keep the best weights; True when early stopping says stop."""
        nonlocal best, best_metrics, bad_evals
        t0 = time.perf_counter()
        vals = task.evaluate(model, device)
        rec = {
            "kind": "val",
            "step": step,
            "epoch": round(step / per_epoch, 3),
            "seconds": round(seconds, 2),
            **vals,
        }
        log.write(rec)
        sched.on_eval(vals[metric])
        shown = "  ".join(f"{k}={v:.4f}" for k, v in vals.items())
        improved = _better(metric, vals[metric], best)
        if improved:
            best, bad_evals = vals[metric], 0
            best_metrics = {f"best_{k}": float(v) for k, v in vals.items()} | {
                "best_step": float(step)
            }
            ck.atomic_save(
                meta()
                | {
                    "model": model.state_dict(),
                    "metrics": best_metrics,
                    "train_seconds": seconds,
                    "step": step,
                    "epoch": step / per_epoch,
                },
                run_dir / ck.CHECKPOINT,
            )
        else:
            bad_evals += 1
        bar.note(
            f"step {step:>6}  {shown}{'  *' if improved else ''}  ({time.perf_counter() - t0:.1f}s)"
        )
        last_val[metric] = f"{vals[metric]:.4f}"
        return tc.patience > 0 and bad_evals >= tc.patience

    model.train()
    t_start = time.perf_counter() - seconds
    deadline = tc.max_minutes * 60.0 if tc.max_minutes > 0 else math.inf
    stop = step >= total
    bar.reset_rate()
    last_eval_step = -1
    while not stop:
        if pos == 0:
            task.reset()
        for batch in task.batches(epoch, pos):
            t_step = time.perf_counter()
            batch = batch.to(device)
            with weight_noise(model, oc.weight_noise):
                with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                    loss, n_tok = task.loss(model, batch)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
            scaler.unscale_(opt)
            gnorm = clip_gradients(params, oc)
            scaler.step(opt)
            scaler.update()
            seconds = time.perf_counter() - t_start
            sched.step(seconds / deadline)  # deadline = inf without a time budget: 0
            step, pos = step + 1, pos + 1
            run_loss, run_n = run_loss + loss.item(), run_n + 1
            bar.update(n_tok)
            work_tokens, work_seconds = (
                work_tokens + n_tok,
                work_seconds + time.perf_counter() - t_step,
            )
            if step % tc.log_every == 0 or step == total:
                rate = bar.rate()
                log.write(
                    {
                        "kind": "train",
                        "step": step,
                        "epoch": round(step / per_epoch, 3),
                        "loss": run_loss / run_n,
                        "lr": sched.lr(),
                        "grad_norm": gnorm,
                        "tokens_per_s": round(rate, 1),
                        "seconds": round(seconds, 2),
                    }
                )
                bar.postfix(loss=run_loss / run_n, lr=sched.lr(), tok_s=f"{rate:,.0f}", **last_val)
                run_loss, run_n = 0.0, 0
                bar.reset_rate()
            end_of_epoch = pos >= per_epoch
            if (tc.eval_every > 0 and step % tc.eval_every == 0) or (
                tc.eval_every <= 0 and end_of_epoch
            ):
                last_eval_step = step
                if evaluate():
                    bar.note(f"early stop: no improvement of {metric} in {tc.patience} evaluations")
                    stop = True
                save_last()
            if (
                step >= total
                or seconds > deadline
                or (stop_after is not None and step >= stop_after)
            ):
                stop = True
            if stop:
                break
        if pos >= per_epoch:
            epoch, pos = epoch + 1, 0

    interrupted = stop_after is not None and step >= stop_after and step < total
    if (
        not interrupted
        and last_eval_step != step
        and not any(r.get("kind") == "val" and r["step"] == step for r in log.records)
    ):
        evaluate()  # the last steps since the previous evaluation count too
    save_last()
    bar.close()
    seconds = time.perf_counter() - t_start
    summary = write_summary(
        run_dir,
        cfg,
        mcfg,
        n_params,
        best_metrics,
        log.records,
        step,
        per_epoch,
        seconds,
        device,
        work_tokens,
        work_seconds,
    )
    if not interrupted and (run_dir / ck.CHECKPOINT).exists():
        # the best checkpoint learns the total training time once the run is over
        best_ck = ck.load(run_dir / ck.CHECKPOINT)
        best_ck["train_seconds"] = seconds
        ck.atomic_save(best_ck, run_dir / ck.CHECKPOINT)
    return summary


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
