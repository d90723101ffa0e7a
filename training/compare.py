"""`rnnserve compare CONFIG`: LSTM vs GRU vs tanh-RNN vs peephole LSTM on one task (Chung et al. 2014).

Every cell trains on the same data, seed and budget (the config's steps, or `--minutes` of wall
clock each). Hidden sizes are chosen so each model has about the parameter count of the config's
model (the reference cell): a GRU has 3 gate blocks to the LSTM's 4 and a tanh-RNN 1, so at equal
parameters they get wider hidden states. Writes, in OUT:

    compare.md / compare.csv   params, hidden size, best validation metric, time/epoch, tokens/s
    compare.png                validation curves of every cell on one plot (against step)
    compare_time.png           the same against training seconds
    <cell>/                    each run folder
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

from training.config import ExperimentConfig

CELLS = ("lstm", "gru", "rnn", "peephole_lstm")


def count_params(
    cfg: ExperimentConfig, vocab_size: int, outputs: int, hidden: int, cell: str
) -> int:
    from training.model import ModelConfig, RNNModel

    mc = dataclasses.asdict(cfg.model) | {
        "cell": cell,
        "forget_bias": lstm_only_forget_bias(cfg, cell),
        "hidden_size": hidden,
        "vocab_size": vocab_size,
        "task": cfg.task,
    }
    if cfg.task == "classify":
        mc["num_classes"] = outputs
    return sum(p.numel() for p in RNNModel(ModelConfig.from_dict(mc)).parameters())


def lstm_only_forget_bias(cfg: ExperimentConfig, cell: str) -> float:
    """The config's forget-gate bias for the LSTM cells; GRU and tanh-RNN have no forget gate."""
    return cfg.model.forget_bias if cell in ("lstm", "peephole_lstm") else 0.0


def matched_hidden(
    cfg: ExperimentConfig, vocab_size: int, outputs: int, cell: str, target: int
) -> int:
    """The hidden size whose parameter count is closest to `target` (bisection on a monotone count)."""
    lo, hi = 1, 8192
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count_params(cfg, vocab_size, outputs, mid, cell) <= target:
            lo = mid
        else:
            hi = mid
    n_lo, n_hi = (count_params(cfg, vocab_size, outputs, h, cell) for h in (lo, hi))
    return lo if abs(n_lo - target) <= abs(n_hi - target) else hi


def compare(
    cfg: ExperimentConfig,
    out: Path,
    cells: tuple[str, ...] = CELLS,
    minutes: float = 0.0,
    steps: int = 0,
) -> list[dict[str, Any]]:
    from training.experiment import build_task, train
    from training.plots import overlay

    out.mkdir(parents=True, exist_ok=True)
    task = build_task(cfg)  # only to learn the vocabulary / label count for the size matching
    outputs = len(task.labels) if task.labels else task.vocab_size
    ref = cfg.model.cell
    target = count_params(cfg, task.vocab_size, outputs, cfg.model.hidden_size, ref)
    rows: list[dict[str, Any]] = []
    curves: dict[str, list[dict[str, Any]]] = {}
    for cell in cells:
        hidden = (
            cfg.model.hidden_size
            if cell == ref
            else matched_hidden(cfg, task.vocab_size, outputs, cell, target)
        )
        run_cfg = dataclasses.replace(
            cfg,
            name=f"{cfg.name}-{cell}",
            model=dataclasses.replace(
                cfg.model,
                cell=cell,  # type: ignore[arg-type]
                hidden_size=hidden,
                forget_bias=lstm_only_forget_bias(cfg, cell),
            ),
            train=dataclasses.replace(
                cfg.train,
                max_minutes=minutes or cfg.train.max_minutes,
                max_steps=steps or cfg.train.max_steps,
            ),
        )
        summary = train(run_cfg, out / cell)
        records = [
            json.loads(line) for line in (out / cell / "metrics.jsonl").read_text().splitlines()
        ]
        curves[f"{cell} (h={hidden}, {summary['parameters']:,})"] = records
        rows.append({"cell": cell, "hidden": hidden, **summary})
    metric = "val_accuracy" if cfg.task == "classify" else "val_loss"
    write_table(rows, out, metric)
    overlay(
        curves,
        metric,
        out / "compare.png",
        f"{cfg.name}: validation {metric.split('_')[1]} by step",
    )
    overlay(
        curves,
        metric,
        out / "compare_time.png",
        f"{cfg.name}: validation {metric.split('_')[1]} by time",
        x_key="seconds",
    )
    return rows


def write_table(rows: list[dict[str, Any]], out: Path, metric: str) -> None:
    cols = [
        "cell",
        "hidden",
        "parameters",
        f"best_{metric}",
        "best_val_loss",
        "steps",
        "epochs",
        "seconds_per_epoch",
        "tokens_per_s",
        "train_seconds",
    ]
    cols = list(dict.fromkeys(cols))  # best_val_loss twice for the LM: keep one
    with (out / "compare.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.4f}" if abs(v) < 10 else f"{v:,.1f}"
        return f"{v:,}" if isinstance(v, int) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    (out / "compare.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
