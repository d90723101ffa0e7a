"""Learning-curve and comparison plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _series(records: list[dict[str, Any]], kind: str, key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in records if r.get("kind") == kind and key in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def learning_curve(records: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Train loss (logged steps) and validation loss against step; val accuracy on a twin axis."""
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    x, y = _series(records, "train", "loss")
    ax.plot(x, y, lw=1, alpha=0.8, label="train loss")
    x, y = _series(records, "val", "val_loss")
    ax.plot(x, y, "o-", lw=1.5, ms=3, label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    xa, ya = _series(records, "val", "val_accuracy")
    if xa:
        ax2 = ax.twinx()
        ax2.plot(xa, ya, "s--", color="tab:green", lw=1.2, ms=3, label="val accuracy")
        ax2.set_ylabel("accuracy")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="best", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def overlay(
    runs: dict[str, list[dict[str, Any]]], key: str, path: Path, title: str, x_key: str = "step"
) -> Path:
    """Validation curves of several runs on one axis (the compare plot)."""
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for name, records in runs.items():
        pts = [(r[x_key], r[key]) for r in records if r.get("kind") == "val" and key in r]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, lw=1.5, label=name)
    ax.set_xlabel("training seconds" if x_key == "seconds" else x_key)
    ax.set_ylabel(key.replace("_", " "))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
