"""What a recurrent state may hold: checked on import (an imported blob is untrusted input) and
before any commit (a step whose outputs are not finite is never stored).

The bounds follow from the cells' equations, so every state the server itself produces passes:
- `h` (every cell) and `pool_max` (a running max of outputs) lie in [-1, 1]: tanh, or an LSTM's
  `o * tanh(c)`, or a GRU's convex mix of a tanh and the previous `h`; `pool_max` starts at -inf.
- an LSTM's `c` moves by at most 1 a token (`c' = f*c + i*g`, |f|, |i|, |g| <= 1): |c| <= tokens
  seen; likewise a mean pool's running sum is at most its count, and the count at most the tokens.
A finite but huge state (say 3e38) in a GRU or tanh-RNN turns its next outputs into NaN.
"""

from __future__ import annotations

from typing import NoReturn

import numpy as np

from service.contract import UnknownCharactersError
from service.engine.finite import nonfinite
from service.engine.registry import LoadedModel
from service.errors import InvalidState
from service.sessions.blob import StateBlob

_SLACK = 1e-3  # float rounding (fp16 variants included) around the exact bounds
# An imported session's counters start at most here: 2^62 commits (and tokens) of headroom
# before the int64 they are stored as, so no run can overflow one (an import at 2^63 - 1,
# fed once, made a version no export could write).
MAX_IMPORTED_COUNT = 2**62
_UNIT = ("h", "pool_max")


def check_import(m: LoadedModel, blob: StateBlob) -> None:
    """Refuse (422 `invalid_state`, field `state`) what no run of this model could produce."""
    for name, count in (("version", blob.version), ("tokens_seen", blob.tokens_seen)):
        if count > MAX_IMPORTED_COUNT:
            _refuse(f"{name} {count} is above {MAX_IMPORTED_COUNT} (2^62), leaving no room to run")
    specs = m.manifest.io.states
    if len(blob.states) != len(specs):
        _refuse(f"{len(blob.states)} state tensors, this model has {len(specs)}")
    for a, s in zip(blob.states, specs, strict=True):
        if a.shape != s.concrete_shape(1) or a.dtype != np.dtype(s.dtype):
            _refuse(
                f"tensor {s.name!r} is {a.dtype}{list(a.shape)}, expected "
                f"{s.dtype}{list(s.concrete_shape(1))}"
            )
    named = {s.name: a for a, s in zip(blob.states, specs, strict=True)}
    for s in specs:
        a = named[s.name].astype(np.float64)
        starts_infinite = bool(np.isinf(s.init))
        values = a[np.isfinite(a)] if starts_infinite else a
        if np.isnan(a).any() or (starts_infinite and (a == -s.init).any()):
            _refuse(f"tensor {s.name!r} holds NaN or an infinity")
        if not starts_infinite and not np.isfinite(a).all():
            _refuse(f"tensor {s.name!r} holds NaN or an infinity")
        top = _bound(s.name, blob.tokens_seen, named)
        if values.size and np.abs(values).max() > top + _SLACK:
            _refuse(
                f"tensor {s.name!r} exceeds {top:g} in magnitude ({np.abs(values).max():g}), "
                "more than any run of this model can reach"
            )
    labels = m.manifest.labels
    k = len(labels) if labels is not None else m.tokenizer.vocab_size
    if blob.logits is not None and (
        blob.logits.shape != (k,) or not np.isfinite(blob.logits).all()
    ):
        _refuse(f"logits must be {k} finite values")
    try:
        ids, rest = m.tokenizer.encode_stream("", blob.pending)
    except UnknownCharactersError as e:
        _refuse(f"pending text: {e}")
    if ids or rest != blob.pending:  # only an unfinished word (word tokenizers) stays pending
        _refuse("pending text is not what this model's tokenizer leaves pending")


def _bound(name: str, tokens_seen: int, named: dict[str, np.ndarray]) -> float:
    if name in _UNIT:
        return 1.0
    if name == "pool_sum" and "pool_count" in named:
        return float(np.abs(named["pool_count"]).max(initial=0.0))
    # c and pool_count, and any state a later cell adds: what tokens_seen steps can reach
    return float(tokens_seen)


def require_finite(
    m: LoadedModel,
    logits: list[np.ndarray | None],
    states: list[np.ndarray] | tuple[np.ndarray, ...],
) -> None:
    """Defence in depth before a commit: a step whose outputs are not finite is never stored
    (the session keeps its version) and never reaches a JSON encoder. (A prefill's outputs are
    checked by the engine as it makes them: `service/engine/finite.py`.)"""
    why = nonfinite(m.manifest.io.states, logits, states)
    if why is not None:
        _refuse(why)


def _refuse(why: str) -> NoReturn:
    raise InvalidState(f"state rejected: {why}", field="state")
