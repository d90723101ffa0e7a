"""A session's state exported and restored: the round trip is exact, and a blob only goes back
into the graph it came from."""

from __future__ import annotations

import numpy as np
import pytest

from service.engine.registry import Registry
from service.errors import InvalidState
from service.sessions import decode_state
from service.sessions.import_export import export_blob, restore
from service.sessions.record import fresh_record
from tests.service.conftest import CLS, LM


def test_export_then_restore_is_exact(registry: Registry) -> None:
    m = registry.models[LM]
    rng = np.random.default_rng(0)
    states = tuple(
        rng.uniform(-0.9, 0.9, s.shape).astype(np.float32) for s in m.manifest.init_states(1)
    )
    logits = rng.standard_normal(m.tokenizer.vocab_size).astype(np.float32)
    rec = fresh_record(m, "s", None, 0.0, 60.0).replace(
        states=states, pending="", logits=logits, version=4, tokens_seen=12
    )
    back = restore(m, fresh_record(m, "t", None, 1.0, 60.0), decode_state(export_blob(m, rec)))
    assert (back.version, back.pending, back.tokens_seen) == (4, "", 12)
    assert back.logits is not None and np.array_equal(back.logits, logits)
    assert all(np.array_equal(a, b) for a, b in zip(back.states, states, strict=True))
    assert back.id == "t"  # the restored state goes into the new session, not the old id


def test_a_blob_from_another_model_is_refused(registry: Registry) -> None:
    lm, other = registry.models[LM], registry.models[CLS]
    blob = decode_state(export_blob(lm, fresh_record(lm, "s", None, 0.0, 60.0)))
    with pytest.raises(InvalidState) as e:
        restore(other, fresh_record(other, "t", None, 0.0, 60.0), blob)
    assert e.value.code == "state_model_mismatch" and e.value.field == "state"
