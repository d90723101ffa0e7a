"""Evaluation arithmetic: classification scores and language-model units."""

from __future__ import annotations

import math


def confusion_matrix(truth: list[int], pred: list[int], n: int) -> list[list[int]]:
    """m[i][j] = how many examples of true class i were predicted as class j."""
    m = [[0] * n for _ in range(n)]
    for t, p in zip(truth, pred, strict=True):
        m[t][p] += 1
    return m


def f1_scores(m: list[list[int]]) -> list[float]:
    """Per-class F1 = 2PR / (P + R) from a confusion matrix (0 where undefined)."""
    n = len(m)
    out = []
    for k in range(n):
        tp = m[k][k]
        fp = sum(m[i][k] for i in range(n)) - tp
        fn = sum(m[k]) - tp
        out.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return out


def classification_report(
    truth: list[int], pred: list[int], labels: list[str]
) -> dict[str, object]:
    m = confusion_matrix(truth, pred, len(labels))
    f1 = f1_scores(m)
    correct = sum(m[k][k] for k in range(len(labels)))
    return {
        "accuracy": correct / max(1, len(truth)),
        "f1_macro": sum(f1) / len(f1),
        "f1": dict(zip(labels, f1, strict=True)),
        "confusion": m,
        "labels": labels,
        "examples": len(truth),
    }


def lm_units(nats: float) -> dict[str, float]:
    """Mean cross-entropy in nats per char -> bits per char (/ ln 2) and perplexity (e^nats)."""
    return {"loss": nats, "bpc": nats / math.log(2), "ppl": math.exp(min(nats, 50.0))}
