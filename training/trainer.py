"""The training loop's state and its steps: `Trainer(...).run()` is what `train()` runs.

A `Trainer` owns one run's live objects (model, optimizer, schedule, AMP scaler, task) and its
counters; each concern is a method: one optimisation step, the periodic log line, an evaluation
(which keeps the best weights), and the resumable snapshot (`checkpoint.ResumeState`, last.pt).
The order of operations inside a step, and what last.pt records, are exactly those of the
single function this replaced, so a resumed run still follows the uninterrupted one bit for bit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from training import checkpoint as ck
from training.config import ExperimentConfig
from training.optim import Schedule, build_optimizer, clip_gradients, weight_noise
from training.progress import MetricsLog, Progress
from training.runtime import describe_device, git_commit, rng_state, set_rng_state

WARMUP_CHECK_STEP = 20  # steps enough to know the pace, early enough to be worth a warning


@dataclass
class Counters:
    """Where the run is, and what it has measured so far (all of it goes into last.pt)."""

    step: int = 0
    epoch: int = 0
    pos: int = 0  # steps into `epoch`
    seconds: float = 0.0  # wall clock, evaluations included
    best: float | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    bad_evals: int = 0
    run_loss: float = 0.0  # running sum of the train loss between log lines
    run_n: int = 0
    work_tokens: int = 0  # training steps only (no evaluation): for tokens/s
    work_seconds: float = 0.0


def better(metric: str, new: float, best: float | None) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(new)
    return new > best if metric == "val_accuracy" else new < best


class Trainer:
    def __init__(
        self,
        cfg: ExperimentConfig,
        run_dir: Path,
        task: Any,
        model: torch.nn.Module,
        mcfg: Any,
        device: torch.device,
        resume: ck.ResumeState | None,
    ) -> None:
        self.cfg, self.run_dir, self.task, self.model, self.mcfg = cfg, run_dir, task, model, mcfg
        self.device = device
        tc, oc = cfg.train, cfg.optim
        self.amp = tc.amp and device.type == "cuda"
        self.n_params = sum(p.numel() for p in model.parameters())
        self.opt = build_optimizer(model, oc)
        self.per_epoch = task.steps_per_epoch()
        self.total = tc.max_steps if tc.max_steps > 0 else tc.epochs * self.per_epoch
        self.metric = "val_accuracy" if cfg.task == "classify" else "val_loss"
        mode = "max" if self.metric == "val_accuracy" else "min"
        self.sched = Schedule(self.opt, oc, self.total, mode)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.c = Counters()
        history: list[dict[str, Any]] = []
        if resume is not None:
            history = self._restore(resume)
        self.log = MetricsLog(run_dir / ck.METRICS, history)
        self.deadline = tc.max_minutes * 60.0 if tc.max_minutes > 0 else math.inf
        # the bar follows whichever of the step budget and the time cap ends the run
        self.bar = Progress(
            self.total,
            self.c.step,
            tc.progress,
            cfg.name,
            time_cap_s=self.deadline,
            seconds=self.c.seconds,
        )
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.commit = git_commit()
        self.last_val: dict[str, str] = {}  # the latest validation metric, on the progress bar

    # -- last.pt ------------------------------------------------------------------------------

    def _restore(self, r: ck.ResumeState) -> list[dict[str, Any]]:
        self.model.load_state_dict(r.model)
        self.opt.load_state_dict(r.optimizer)
        self.sched.load_state_dict(r.schedule)
        self.scaler.load_state_dict(r.scaler)
        self.task.load_state_dict(r.task, self.device)
        set_rng_state(r.rng)
        self.c = Counters(
            step=r.step,
            epoch=r.epoch,
            pos=r.pos,
            seconds=r.train_seconds,
            best=r.best,
            best_metrics=r.best_metrics,
            bad_evals=r.bad_evals,
            run_loss=r.running_loss[0],
            run_n=r.running_loss[1],
            work_tokens=r.work[0],
            work_seconds=r.work[1],
        )
        return r.history

    def meta(self) -> dict[str, Any]:
        """What checkpoint.pt and last.pt both carry: enough to rebuild the model."""
        return {
            "model_config": self.mcfg.to_dict(),
            "config": self.cfg.to_dict(),
            "labels": self.task.labels,
            "tokenizer": self.task.tokenizer.model_dump(mode="json"),
            "dataset": self.task.dataset,
            "git_commit": self.commit,
            "parameters": self.n_params,
            "device": describe_device(self.device),
        }

    def resume_state(self) -> ck.ResumeState:
        c = self.c
        e, p = (c.epoch + 1, 0) if c.pos >= self.per_epoch else (c.epoch, c.pos)
        return ck.ResumeState(
            model=self.model.state_dict(),
            optimizer=self.opt.state_dict(),
            schedule=self.sched.state_dict(),
            scaler=self.scaler.state_dict(),
            task=self.task.state_dict() if p > 0 else {"carried": None},
            rng=rng_state(),
            step=c.step,
            epoch=e,
            pos=p,
            train_seconds=c.seconds,
            best=c.best,
            best_metrics=c.best_metrics,
            bad_evals=c.bad_evals,
            history=self.log.records,
            running_loss=(c.run_loss, c.run_n),
            work=(c.work_tokens, c.work_seconds),
        )

    def save_last(self) -> None:
        ck.atomic_save(self.meta() | self.resume_state().to_dict(), self.run_dir / ck.LAST)

    # -- evaluation ---------------------------------------------------------------------------

    def evaluate(self) -> bool:
        """Validate, keep the best weights; True when early stopping says stop."""
        c, metric = self.c, self.metric
        t0 = time.perf_counter()
        vals = self.task.evaluate(self.model, self.device)
        rec = {
            "kind": "val",
            "step": c.step,
            "epoch": round(c.step / self.per_epoch, 3),
            "seconds": round(c.seconds, 2),
            **vals,
        }
        self.log.write(rec)
        self.sched.on_eval(vals[metric])
        shown = "  ".join(f"{k}={v:.4f}" for k, v in vals.items())
        improved = better(metric, vals[metric], c.best)
        if improved:
            c.best, c.bad_evals = vals[metric], 0
            c.best_metrics = {f"best_{k}": float(v) for k, v in vals.items()} | {
                "best_step": c.step  # a step count, shown as one (not 104.0)
            }
            ck.atomic_save(
                self.meta()
                | {
                    "model": self.model.state_dict(),
                    "metrics": c.best_metrics,
                    "train_seconds": c.seconds,
                    "step": c.step,
                    "epoch": c.step / self.per_epoch,
                },
                self.run_dir / ck.CHECKPOINT,
            )
        else:
            c.bad_evals += 1
        took = time.perf_counter() - t0
        self.bar.note(f"step {c.step:>6}  {shown}{'  *' if improved else ''}  ({took:.1f}s)")
        self.last_val[metric] = f"{vals[metric]:.4f}"
        patience = self.cfg.train.patience
        return patience > 0 and c.bad_evals >= patience

    # -- one step -----------------------------------------------------------------------------

    def train_step(self, batch: Any, t_start: float) -> float:
        """Forward + loss (autocast on CUDA) -> backward -> clip -> optimizer and LR schedule
        steps; returns the gradient norm."""
        c, oc, model = self.c, self.cfg.optim, self.model
        t_step = time.perf_counter()
        batch = batch.to(self.device)
        with weight_noise(model, oc.weight_noise):
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                loss, n_tok = self.task.loss(model, batch)
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        gnorm: float = clip_gradients(self.params, oc)
        self.scaler.step(self.opt)
        self.scaler.update()
        c.seconds = time.perf_counter() - t_start
        self.sched.step(c.seconds / self.deadline)  # deadline = inf without a time budget: 0
        c.step, c.pos = c.step + 1, c.pos + 1
        c.run_loss, c.run_n = c.run_loss + loss.item(), c.run_n + 1
        self.bar.update(n_tok, c.seconds)
        c.work_tokens += n_tok
        c.work_seconds += time.perf_counter() - t_step
        return gnorm

    def log_train(self, gnorm: float) -> None:
        c = self.c
        rate = self.bar.rate()
        self.log.write(
            {
                "kind": "train",
                "step": c.step,
                "epoch": round(c.step / self.per_epoch, 3),
                "loss": c.run_loss / c.run_n,
                "lr": self.sched.lr(),
                "grad_norm": gnorm,
                "tokens_per_s": round(rate, 1),
                "seconds": round(c.seconds, 2),
            }
        )
        self.bar.postfix(
            loss=c.run_loss / c.run_n, lr=self.sched.lr(), tok_s=f"{rate:,.0f}", **self.last_val
        )
        c.run_loss, c.run_n = 0.0, 0
        self.bar.reset_rate()

    # -- the loop -----------------------------------------------------------------------------

    def _warn_if_the_cap_ends_the_warmup(self) -> None:
        """A time cap that ends the run inside the learning-rate warm-up leaves a model that
        never trained at its full rate: say so early, with the numbers."""
        warmup, pace = self.cfg.optim.warmup_steps, self.bar.steps_per_s()
        if not math.isfinite(self.deadline) or pace <= 0:
            return
        reachable = int(pace * self.deadline)
        if reachable < warmup:
            self.bar.note(
                f"warning: at {pace:.3g} step/s the {self.cfg.train.max_minutes:g}-minute time "
                f"cap ends the run near step {reachable}, inside the {warmup}-step learning-rate "
                "warm-up; raise train.max_minutes or lower optim.warmup_steps"
            )

    def run(self, stop_after: int | None) -> bool:
        """Train until a budget, early stopping or `stop_after` ends it; True if `stop_after`
        interrupted it (as a crash would: last.pt written, no final evaluation)."""
        c, tc = self.c, self.cfg.train
        self.bar.note(
            f"[{self.cfg.name}] {self.mcfg.cell} {self.n_params:,} params on "
            f"{describe_device(self.device)}; {self.per_epoch} steps/epoch, {self.total} steps; "
            f"data: {self.task.dataset}"
        )
        self.model.train()
        t_start = time.perf_counter() - c.seconds
        stop = c.step >= self.total
        self.bar.reset_rate()
        last_eval_step = -1
        while not stop:
            if c.pos == 0:
                self.task.reset()
            for batch in self.task.batches(c.epoch, c.pos):
                gnorm = self.train_step(batch, t_start)
                if c.step == WARMUP_CHECK_STEP:
                    self._warn_if_the_cap_ends_the_warmup()
                if c.step % tc.log_every == 0 or c.step == self.total:
                    self.log_train(gnorm)
                end_of_epoch = c.pos >= self.per_epoch
                if (tc.eval_every > 0 and c.step % tc.eval_every == 0) or (
                    tc.eval_every <= 0 and end_of_epoch
                ):
                    last_eval_step = c.step
                    if self.evaluate():
                        self.bar.note(
                            f"early stop: no improvement of {self.metric} in {tc.patience} "
                            "evaluations"
                        )
                        stop = True
                    self.save_last()
                if (
                    c.step >= self.total
                    or c.seconds > self.deadline
                    or (stop_after is not None and c.step >= stop_after)
                ):
                    stop = True
                if stop:
                    break
            if c.pos >= self.per_epoch:
                c.epoch, c.pos = c.epoch + 1, 0

        interrupted = stop_after is not None and c.step >= stop_after and c.step < self.total
        if (
            not interrupted
            and last_eval_step != c.step
            and not any(r.get("kind") == "val" and r["step"] == c.step for r in self.log.records)
        ):
            self.evaluate()  # the last steps since the previous evaluation count too
        self.save_last()
        self.bar.close()
        c.seconds = time.perf_counter() - t_start
        return interrupted
