"""What a recurrent state may hold: an imported blob is checked against what the model's cells
can produce, and a step whose outputs are not finite is never committed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from service.engine.registry import Registry
from service.errors import InvalidState
from service.sessions.blob import StateBlob
from service.sessions.bounds import MAX_IMPORTED_COUNT, check_import, require_finite
from tests.service.conftest import LM


def _blob(registry: Registry, tokens_seen: int = 5) -> StateBlob:
    m = registry.models[LM]  # tiny-char-lstm: states h and c
    states = [np.zeros_like(a) for a in m.manifest.init_states(1)]
    return StateBlob(
        model=m.name,
        model_sha256=m.sha256,
        version=3,
        tokens_seen=tokens_seen,
        pending="",
        states=states,
        logits=np.zeros(m.tokenizer.vocab_size, np.float32),
    )


def _refused(registry: Registry, blob: StateBlob) -> str:
    with pytest.raises(InvalidState) as e:
        check_import(registry.models[LM], blob)
    assert e.value.field == "state"
    return e.value.message


def test_a_state_the_model_could_produce_is_accepted(registry: Registry) -> None:
    blob = _blob(registry)
    blob.states[0].flat[0] = 0.999  # |h| <= 1
    blob.states[1].flat[0] = -4.9  # |c| <= tokens seen (5)
    check_import(registry.models[LM], blob)


def test_what_no_run_could_produce_is_refused(registry: Registry) -> None:
    far = _blob(registry)
    far.states[1].flat[0] = 5.5
    assert "'c' exceeds 5" in _refused(registry, far)
    h = _blob(registry)
    h.states[0].flat[0] = 1.5
    assert "'h' exceeds 1" in _refused(registry, h)
    nan = _blob(registry)
    nan.states[0].flat[0] = np.nan
    assert "NaN" in _refused(registry, nan)
    shaped = dataclasses.replace(_blob(registry), states=[np.zeros((1, 3), np.float32)] * 2)
    assert "expected" in _refused(registry, shaped)
    counted = dataclasses.replace(_blob(registry), version=MAX_IMPORTED_COUNT + 1)
    assert "2^62" in _refused(registry, counted)
    short = dataclasses.replace(_blob(registry), logits=np.zeros(3, np.float32))
    assert "logits" in _refused(registry, short)


def test_non_finite_outputs_are_never_committed(registry: Registry) -> None:
    m = registry.models[LM]
    states = m.manifest.init_states(1)
    require_finite(m, [np.zeros(4, np.float32), None], states)
    with pytest.raises(InvalidState):
        require_finite(m, [np.array([0.0, np.inf], np.float32)], states)
    bad = [np.full_like(states[0], np.nan), states[1]]
    with pytest.raises(InvalidState, match="'h' became non-finite"):
        require_finite(m, [None], bad)
    for x in (np.inf, -np.inf, np.nan):  # one element of any kind, anywhere, and +inf with -inf
        c = states[1].copy()
        c.flat[-1] = x
        with pytest.raises(InvalidState, match="'c' became non-finite"):
            require_finite(m, [None], [states[0], c])
    both = np.array([np.inf, -np.inf], np.float32)
    with pytest.raises(InvalidState):
        require_finite(m, [both], states)
    huge = np.full_like(states[1], np.finfo(np.float32).max)  # finite: its sum must not overflow
    require_finite(m, [np.full(4, np.finfo(np.float32).max, np.float32)], [states[0], huge])
