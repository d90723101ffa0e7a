"""Live progress (tqdm) and the per-run `metrics.jsonl` log.

Bars appear only for a person at a terminal (`train.progress = "auto"`): piped output and CI
(`CI` set) get a plain line per evaluation instead, so logs stay readable.

A run ends at its step budget (`max_steps`, or `epochs` x steps per epoch) or at its time cap
(`max_minutes`), whichever comes first, so the bar follows that limit: with a cap that ends the
run first, the bar fills with the clock and the ETA is the time left, not the hours the step
budget would take (`smoke:  53%|#####3    | step 27/6100, 00:16/00:30 [ETA 00:14 time cap, ...]`).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.runtime import interactive

BAR_UNITS = 1000  # the tqdm counter is the fraction of the governing limit, in 0.1 % units
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar:12}| {status}"  # the bar never below 12 columns


@dataclass(frozen=True)
class Estimate:
    """How far the run is along the limit expected to end it, and when that will be."""

    limit: str  # "steps" | "time cap"
    fraction: float  # 0..1 of that limit
    eta_s: float  # seconds until it is reached; inf when not yet known


def estimate(step: int, total: int, seconds: float, cap_s: float, steps_per_s: float) -> Estimate:
    """The limit that ends the run first at the current pace: the step budget at `steps_per_s`,
    or the time cap (`cap_s`, inf for none). Before the pace is known the cap governs."""
    eta_steps = (total - step) / steps_per_s if steps_per_s > 0 else math.inf
    eta_time = cap_s - seconds
    if eta_time < eta_steps:
        return Estimate("time cap", min(1.0, seconds / cap_s), max(0.0, eta_time))
    return Estimate("steps", min(1.0, step / total) if total > 0 else 1.0, eta_steps)


def clock(seconds: float) -> str:
    """mm:ss, or h:mm:ss from an hour on (what tqdm shows); ? when unknown."""
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def status(step: int, total: int, seconds: float, cap_s: float, e: Estimate, extra: str) -> str:
    """The text right of the bar: both limits, the ETA of the one that governs, then `extra`."""
    spent = f"{clock(seconds)}/{clock(cap_s)}" if math.isfinite(cap_s) else clock(seconds)
    return f"step {step}/{total}, {spent} [ETA {clock(e.eta_s)} {e.limit}{extra}]"


class MetricsLog:
    """Append-only JSON lines: {"kind": "train"|"val", "step": ..., ...}; flushed per record."""

    def __init__(self, path: Path, history: list[dict[str, Any]] | None = None) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = list(history or [])
        # (re)write what is known: on resume, records past the resumed step are dropped
        path.write_text("".join(json.dumps(r) + "\n" for r in self.records), encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _bar_class() -> Any:
    from tqdm.auto import tqdm

    class Bar(tqdm):
        """tqdm with our own text right of the bar (`{status}` in the bar format)."""

        status = ""

        @property
        def format_dict(self) -> dict[str, Any]:
            d = super().format_dict
            # the bar keeps its 12 columns; the status gets what the terminal has left, cut
            # at the end (the metrics come first in it, so they survive a narrow terminal)
            room = (d.get("ncols") or 0) - len(str(d.get("prefix") or "")) - 25
            text = self.status
            if room > 10 and len(text) > room:
                text = text[: room - 1] + "…"
            return {**d, "status": text}

    return Bar


class Progress:
    def __init__(
        self,
        total: int,
        initial: int,
        mode: str,
        desc: str,
        *,
        time_cap_s: float = math.inf,
        seconds: float = 0.0,
    ) -> None:
        """`total` steps in the budget, `initial` already done (a resumed run) in `seconds`;
        `time_cap_s` is the wall-clock cap (inf for none)."""
        show = mode == "on" or (mode == "auto" and interactive())
        self.total, self.step, self.cap_s, self.seconds = total, initial, time_cap_s, seconds
        self._since = (initial, seconds)  # the pace counts this process's steps only
        self._t0 = time.perf_counter() - seconds
        self._metrics = ""
        self.bar: Any = None
        if show:
            bar_class = _bar_class()
            bar_class.status = self._status(self.estimate())  # tqdm draws once on creation
            self.bar = bar_class(
                total=BAR_UNITS,
                desc=desc,
                dynamic_ncols=True,
                leave=True,
                bar_format=BAR_FORMAT,
            )
            self._show()
        self._t = time.perf_counter()
        self._tokens = 0

    def update(self, tokens: int, seconds: float | None = None) -> None:
        """Advance one step that consumed `tokens` tokens; `seconds` is the run's clock (evaluations
        and resumed time included, as the time cap counts it), by default this object's own."""
        self._tokens += tokens
        self.step += 1
        self.seconds = time.perf_counter() - self._t0 if seconds is None else seconds
        if self.bar is not None:
            self._show()

    def steps_per_s(self) -> float:
        step0, seconds0 = self._since
        dt = self.seconds - seconds0
        return (self.step - step0) / dt if dt > 0 else 0.0

    def estimate(self) -> Estimate:
        return estimate(self.step, self.total, self.seconds, self.cap_s, self.steps_per_s())

    def _status(self, e: Estimate) -> str:
        extra = f", {self.steps_per_s():.3g} step/s"
        return self._metrics + status(self.step, self.total, self.seconds, self.cap_s, e, extra)

    def _show(self) -> None:
        e = self.estimate()
        self.bar.status = self._status(e)
        self.bar.update(round(e.fraction * BAR_UNITS) - self.bar.n)  # redrawn at most every 0.1 s

    def rate(self) -> float:
        """Tokens per second since the last `reset_rate` (train steps only)."""
        dt = time.perf_counter() - self._t
        return self._tokens / dt if dt > 0 else 0.0

    def reset_rate(self) -> None:
        self._t, self._tokens = time.perf_counter(), 0

    def postfix(self, **values: float | str) -> None:
        shown = {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in values.items()}
        self._metrics = "".join(f"{k}={v} " for k, v in shown.items())

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self._show()
            self.bar.refresh()
            self.bar.close()
