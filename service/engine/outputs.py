"""What a model's logits say, as the typed outputs the surfaces encode: a classifier's label and
probabilities, a language model's most likely next tokens (a session feed's answer)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.engine.registry import LoadedModel
from service.protocol.messages import Classification, NextTokens, Output, Prob
from service.protocol.softmax import softmax


def output(m: LoadedModel, logits: np.ndarray | None, top_k: int) -> Output | None:
    """Classifier: label + probs. Language model: the `top_k` most likely next tokens."""
    if logits is None:
        return None
    p = softmax(logits)
    labels = m.manifest.labels
    if labels is not None:
        return Classification(labels[int(np.argmax(p))], dict(zip(labels, p.tolist(), strict=True)))
    top = np.argsort(-p, kind="stable")[: min(top_k, p.size)].tolist()
    vocab = m.view.vocab
    return NextTokens(tuple(map(Prob, [vocab[i] for i in top], p[top].tolist())))


def outputs(
    m: LoadedModel, rows: Sequence[np.ndarray | None], top_k: Sequence[int]
) -> list[Output | None]:
    """`output` of each row (K,) with its own `top_k`, the arithmetic done once for the
    lot (a batch of session feeds): the same numbers `output` gives row by row."""
    live = [i for i, r in enumerate(rows) if r is not None]
    out: list[Output | None] = [None] * len(rows)
    if not live:
        return out
    # (np.array of the rows: a third of np.stack's time, which checks each row in Python)
    p = softmax(np.array([r for r in rows if r is not None]))  # (B, K)
    labels = m.manifest.labels
    if labels is not None:
        best = np.argmax(p, axis=1).tolist()
        for i, b, row in zip(live, best, p.tolist(), strict=True):
            out[i] = Classification(labels[b], dict(zip(labels, row, strict=True)))
        return out
    k = min(max(top_k[i] for i in live), p.shape[1])
    top = np.argsort(-p, axis=1, kind="stable")[:, :k]  # (B, k)
    probs = p[np.arange(len(p))[:, None], top].tolist()  # (B, k)
    vocab = m.view.vocab
    for i, ids, ps in zip(live, top.tolist(), probs, strict=True):
        n = top_k[i]
        out[i] = NextTokens(tuple(map(Prob, [vocab[t] for t in ids[:n]], ps[:n])))
    return out
