"""Optimisers, learning-rate schedules, gradient clipping and weight noise."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from training.config import OptimConfig


def build_optimizer(model: nn.Module, oc: OptimConfig) -> torch.optim.Optimizer:
    """AdamW / Adam / RMSProp. Weight decay applies to matrices only (not biases, peepholes)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": oc.weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    betas = (oc.betas[0], oc.betas[1])
    if oc.name == "adamw":
        return torch.optim.AdamW(groups, lr=oc.lr, betas=betas, eps=oc.eps)
    if oc.name == "adam":  # L2 penalty added to the gradient (coupled), as in classic Adam
        return torch.optim.Adam(groups, lr=oc.lr, betas=betas, eps=oc.eps)
    return torch.optim.RMSprop(groups, lr=oc.lr, alpha=oc.alpha, eps=oc.eps, momentum=oc.momentum)


def lr_multiplier(step: int, oc: OptimConfig, total_steps: int, time_frac: float = 0.0) -> float:
    """Linear warm-up over `warmup_steps`, then (cosine) a half cosine down to `min_lr_ratio`:

        m(s) = r + (1 - r) * (1 + cos(pi * p)) / 2,   p = (s - w) / (S - w) in [0, 1]

    With a wall-clock budget, p = max(that, fraction of the budget used): the schedule anneals by
    whichever budget runs out first, so a run cut by time still ends at a low learning rate.
    """
    w = oc.warmup_steps
    if w > 0 and step < w:
        return (step + 1) / w
    if oc.schedule != "cosine":
        return 1.0
    p = min(1.0, max((step - w) / max(1, total_steps - w), time_frac))
    r = oc.min_lr_ratio
    return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * p))


class Schedule:
    """The learning rate at every step: lr = base_lr * m(step) * plateau_scale.

    m is the warm-up(+cosine) multiplier above. With `schedule = "plateau"` the scale is multiplied
    by `plateau_factor` after more than `plateau_patience` evaluations without improvement
    (ReduceLROnPlateau's rule, kept here so the whole schedule is one small resumable state).
    """

    def __init__(self, opt: torch.optim.Optimizer, oc: OptimConfig, total_steps: int, mode: str):
        self.opt, self.oc, self.total_steps, self.mode = opt, oc, total_steps, mode
        self.base_lrs = [oc.lr for _ in opt.param_groups]
        self.step_count = 0
        self.scale = 1.0
        self.best: float | None = None
        self.bad = 0
        self.time_frac = 0.0  # set by the loop when the run has a wall-clock budget
        self._apply()

    def _apply(self) -> None:
        m = lr_multiplier(self.step_count, self.oc, self.total_steps, self.time_frac) * self.scale
        for g, base in zip(self.opt.param_groups, self.base_lrs, strict=True):
            g["lr"] = base * m

    def step(self, time_frac: float = 0.0) -> None:
        self.step_count += 1
        self.time_frac = time_frac
        self._apply()

    def on_eval(self, metric: float) -> None:
        if self.oc.schedule != "plateau":
            return
        better = self.best is None or (
            metric < self.best if self.mode == "min" else metric > self.best
        )
        if better:
            self.best, self.bad = metric, 0
            return
        self.bad += 1
        if self.bad > self.oc.plateau_patience:
            self.scale *= self.oc.plateau_factor
            self.bad = 0
            self._apply()

    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, float | int | None]:
        return {
            "step": self.step_count,
            "scale": self.scale,
            "best": self.best,
            "bad": self.bad,
            "time_frac": self.time_frac,
        }

    def load_state_dict(self, state: dict[str, float | int | None]) -> None:
        self.step_count = int(state["step"] or 0)
        self.scale = float(state["scale"] or 1.0)
        self.best = None if state["best"] is None else float(state["best"])
        self.bad = int(state["bad"] or 0)
        self.time_frac = float(state.get("time_frac") or 0.0)
        self._apply()


def clip_gradients(params: Iterable[nn.Parameter], oc: OptimConfig) -> float:
    """Clip by value (elementwise clamp to [-v, v]) and/or by the global L2 norm.

    Returns the global gradient norm measured before norm clipping (after value clipping), for
    logging. Value clipping first: it bounds outliers; the norm then rescales the whole direction.
    """
    params = [p for p in params if p.grad is not None]
    if oc.clip_value > 0:
        torch.nn.utils.clip_grad_value_(params, oc.clip_value)
    max_norm = oc.clip_norm if oc.clip_norm > 0 else math.inf
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


@contextmanager
def weight_noise(model: nn.Module, std: float) -> Iterator[None]:
    """Graves (2011) / Chung et al. (2014) weight noise: w~ = w + N(0, std^2), fresh each step.

    The forward and backward passes see the noisy weights; the clean weights are restored before
    the optimizer step, so the update (computed at w~) is applied to w.
    """
    if std <= 0:
        yield
        return
    params = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * std)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, w in zip(params, saved, strict=True):
                p.copy_(w)
