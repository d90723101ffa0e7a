"""Probabilities from logits, in float64 (the engine's outputs and sampling, and v2's PROBS, which an
API worker computes from the logits it is sent)."""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    out: np.ndarray = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    # exp(x - max) / sum in place: five C calls (exp of the log-softmax took eight; this runs
    # for every session feed's answer)
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x
