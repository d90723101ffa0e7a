"""v2 sequence steps at the engine level (no HTTP), through the session service that owns their
rules: start / continue / end, gone sequences, owners' namespaces, and chunked steps equal to
one step."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest

from service.engine.engine import Engine
from service.engine.registry import LoadedModel, Registry
from service.engine.scheduler import SchedulerConfig
from service.errors import SequenceError, ServiceError, SessionNotFound
from service.protocol.messages import SequenceRef
from service.protocol.ops import SequenceStep
from service.sessions import MemoryStore
from service.sessions.service import SessionService
from tests.service.conftest import CLS, LM, FakeClock


@pytest.fixture
async def steps(registry: Registry, clock: FakeClock) -> AsyncIterator[SessionService]:
    engine = Engine(registry, SchedulerConfig(max_wait_ms=1.0))
    engine.start()
    store = MemoryStore(100, clock=clock)
    yield SessionService(
        engine, store, default_ttl_s=60, max_ttl_s=600, idempotency_ttl_s=60, clock=clock
    )
    await engine.close(1)


async def _step(
    svc: SessionService,
    m: LoadedModel,
    seq: SequenceRef,
    text: str | None,
    ids: list[int] | None,
    owner: str | None,
) -> np.ndarray:
    out = await svc.sequence_step(SequenceStep(m.name, seq, text, ids, owner))
    assert out.model == m.key  # the version it ran on
    return out.logits


def _seq(sid: str = "7", *, start: bool = False, end: bool = False) -> SequenceRef:
    return SequenceRef(session_id=sid, label=sid, start=start, end=end)


async def test_chunked_steps_equal_one_step(steps: SessionService) -> None:
    m = steps.engine.model(LM)
    text = "To be, or not to be: that is the question"
    whole = await _step(steps, m, _seq("a", start=True, end=True), text, None, None)
    await _step(steps, m, _seq("b", start=True), text[:9], None, None)
    await _step(steps, m, _seq("b"), text[9:22], None, None)
    last = await _step(steps, m, _seq("b", end=True), text[22:], None, None)
    assert np.abs(last - whole).max() <= 1e-5


async def test_start_and_end_store_nothing(steps: SessionService) -> None:
    m = steps.engine.model(LM)
    await _step(steps, m, _seq(start=True, end=True), "hello", None, None)
    with pytest.raises(SessionNotFound):
        await steps.store.get("7")
    await _step(steps, m, _seq(start=True), "hello", None, None)
    assert (await steps.store.get("7")).version == 1
    await _step(steps, m, _seq(end=True), " there", None, None)  # end frees the state
    with pytest.raises(SessionNotFound):
        await steps.store.get("7")


async def test_a_gone_sequence_is_a_400_naming_it(steps: SessionService) -> None:
    m = steps.engine.model(LM)
    with pytest.raises(SequenceError) as e:
        await _step(steps, m, _seq("42"), "hello", None, None)
    assert e.value.status == 400 and e.value.field == "parameters.sequence_id"
    assert "42" in e.value.message and "sequence_start" in e.value.message


async def test_another_owners_sequence_is_invisible(steps: SessionService) -> None:
    m = steps.engine.model(LM)
    await _step(steps, m, _seq(start=True), "hello", None, "alice")
    with pytest.raises(SequenceError):  # continuing bob's "7" finds nothing
        await _step(steps, m, _seq(), " there", None, "bob")
    # bob may start his own "7": ids live in the owner's namespace
    await _step(steps, m, _seq(start=True), "hi", None, "bob")
    assert (await steps.store.get("alice/7")).tokens_seen == 5


async def test_token_ids_cannot_continue_unfinished_text(steps: SessionService) -> None:
    m = steps.engine.model(CLS)  # a word tokenizer: "wor" stays pending
    await _step(steps, m, _seq(start=True), "hello wor", None, None)
    before = await steps.store.get("7")
    with pytest.raises(ServiceError) as e:
        await _step(steps, m, _seq(), None, [1, 2], None)
    assert e.value.field == "TOKEN_IDS" and "unfinished text" in e.value.message
    assert (await steps.store.get("7")).version == before.version  # nothing advanced
