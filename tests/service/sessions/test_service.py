"""Session semantics at the engine level (no HTTP): order, atomicity under faults."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from service.engine.registry import LoadedModel
from service.errors import EngineError, ModelChanged
from service.protocol.messages import GenerateParams
from service.protocol.ops import CreateSession, ExportState, Feed, SessionGenerate
from service.sessions.service import SessionService
from tests.conftest import LONG
from tests.service.conftest import LM
from tests.service.sessions.conftest import flaky as _flaky


async def test_operations_apply_in_arrival_order(svc: SessionService) -> None:
    sid = (await svc.create(CreateSession(LM, None, None, None, None))).session_id
    pieces = [f"{chr(97 + i % 26)}" for i in range(50)]
    tasks = [asyncio.create_task(svc.feed(Feed(sid, p, 3, None, None, None))) for p in pieces]
    results = await asyncio.gather(*tasks)
    assert [r.version for r in results] == list(range(1, 51))  # task i committed version i+1


async def test_engine_failure_leaves_session_unchanged(svc: SessionService) -> None:
    sid = (await svc.create(CreateSession(LM, None, None, None, None))).session_id
    await svc.feed(Feed(sid, "abc", 3, None, None, None))
    before = await svc.export_state(ExportState(sid, None))
    _flaky(svc).fail_after = _flaky(svc).calls
    with pytest.raises(EngineError):
        await svc.feed(Feed(sid, "def", 3, None, None, None))
    gen = await svc.open_generation(
        SessionGenerate(sid, GenerateParams(max_tokens=5), None, None, None)
    )
    with pytest.raises(EngineError):
        await gen.collect()
    assert await svc.export_state(ExportState(sid, None)) == before
    _flaky(svc).fail_after = None
    assert (await svc.feed(Feed(sid, "def", 3, None, None, None))).version == 2


async def test_failure_mid_generation_leaves_session_unchanged(svc: SessionService) -> None:
    sid = (await svc.create(CreateSession(LM, None, None, None, None))).session_id
    before = await svc.export_state(ExportState(sid, None))
    gen = await svc.open_generation(
        SessionGenerate(sid, GenerateParams(max_tokens=50), None, None, None)
    )
    _flaky(svc).fail_after = _flaky(svc).calls + 5  # fail on the 6th decode step
    seen = 0
    with pytest.raises(EngineError):
        async for _ in gen.events():
            seen += 1
    assert seen == 6
    assert await svc.export_state(ExportState(sid, None)) == before


async def test_cancelled_generation_commits_nothing(svc: SessionService) -> None:
    sid = (await svc.create(CreateSession(LM, None, None, None, None))).session_id
    before = await svc.export_state(ExportState(sid, None))
    gen = await svc.open_generation(
        SessionGenerate(sid, GenerateParams(max_tokens=LONG), None, None, None)
    )

    async def consume() -> None:
        async for _ in gen.events():
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await svc.export_state(ExportState(sid, None)) == before
    assert svc.engine.scheduler(LM).active_streams in (0, 1)  # dropped before the next step
    r = await asyncio.wait_for(svc.feed(Feed(sid, "a", 1, None, None, None)), 2)  # lock released
    assert r.version == 1


async def test_a_session_of_a_redeployed_graph_answers_model_changed(svc: SessionService) -> None:
    """A session's state belongs to the graph it was made with (its sha256): once another graph
    of the model is served, every operation answers 409 model_changed, and nothing is fed."""
    sid = (await svc.create(CreateSession(LM, None, None, None, None))).session_id
    await svc.feed(Feed(sid, "ab", 1, None, None, None))
    before = await svc.export_state(ExportState(sid, None))
    reg = svc.engine.registry
    m = reg.models[LM]

    def serve(only: LoadedModel) -> None:  # as if the server had restarted on `only`
        reg.models[LM], reg.versions[LM] = only, {only.version: only}

    serve(dataclasses.replace(m, manifest=m.manifest.model_copy(update={"onnx_sha256": "0" * 64})))
    with pytest.raises(ModelChanged) as e:
        await svc.feed(Feed(sid, "c", 1, None, None, None))
    assert (e.value.status, e.value.code) == (409, "model_changed")
    with pytest.raises(ModelChanged):
        await svc.open_generation(
            SessionGenerate(sid, GenerateParams(max_tokens=3), None, None, None)
        )
    serve(m)  # the original graph again: the session is intact
    assert await svc.export_state(ExportState(sid, None)) == before
