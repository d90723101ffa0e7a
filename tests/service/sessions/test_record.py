"""What native sessions and v2 sequences share: store keys, fresh records, the peeking advance
and the streamable check."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from service.engine.engine import Engine
from service.engine.registry import Registry
from service.engine.scheduler import SchedulerConfig
from service.errors import UnsupportedTask
from service.sessions import MemoryStore
from service.sessions.record import fresh_record
from service.sessions.service import SessionService, require_streamable
from service.sessions.store import public_id, store_id
from tests.service.conftest import LM


def test_store_keys_scope_ids_by_owner_and_give_back_the_callers_id() -> None:
    assert store_id("abc", None) == "abc" and public_id("abc") == "abc"
    assert store_id("abc", "team-a") == "team-a/abc" and public_id("team-a/abc") == "abc"
    assert store_id("abc", "team-a") != store_id("abc", "team-b")


def test_a_fresh_record_is_version_0_at_the_initial_state(registry: Registry) -> None:
    m = registry.models[LM]
    rec = fresh_record(m, "s1", None, now=100.0, ttl_s=30.0)
    assert (rec.version, rec.pending, rec.logits, rec.expires_at) == (0, "", None, 130.0)
    assert rec.model_sha256 == m.sha256
    for got, want in zip(rec.states, m.manifest.init_states(1), strict=True):
        assert np.array_equal(got, want)


def test_only_streamable_models_take_sessions(registry: Registry) -> None:
    m = registry.models[LM]
    require_streamable(m)
    bidi = m.manifest.model_copy(update={"streamable": False})
    with pytest.raises(UnsupportedTask) as e:
        require_streamable(dataclasses.replace(m, manifest=bidi))
    assert e.value.code == "not_streamable"


async def test_the_peek_equals_one_shot_and_commits_only_finished_tokens(
    registry: Registry,
) -> None:
    engine = Engine(registry, SchedulerConfig(max_wait_ms=1.0))
    engine.start()
    try:
        m = registry.models[LM]
        rec = fresh_record(m, "s", None, 0.0, 60.0)
        ids = m.tokenizer.encode("ab")
        svc = SessionService(
            engine, MemoryStore(10), default_ttl_s=60, max_ttl_s=600, idempotency_ttl_s=60
        )
        shown, new = await svc.advance(m, rec, ids, "cd", version=1)
        logits, states = new.logits, new.states
        assert (new.version, new.pending, new.tokens_seen) == (1, "cd", len(ids))
        whole, _ = await engine.prefill(m, m.tokenizer.encode("abcd"), list(rec.states))
        only_ab, ab_states = await engine.prefill(m, ids, list(rec.states))
        assert shown is not None and np.abs(shown - whole).max() <= 1e-5
        assert logits is not None and np.abs(logits - only_ab).max() <= 1e-5
        for got, want in zip(states, ab_states, strict=True):
            assert np.abs(got - want).max() <= 1e-5
    finally:
        await engine.close(1)
