"""An API worker's end of the wire: an operation's answer is the in-process engine's, errors
are the same errors naming the same fields, and once the engine process is known dead every
call fails at once."""

from __future__ import annotations

import asyncio

import msgspec
import numpy as np
import pytest

from service.api.health import engine_problems
from service.errors import InvalidInput
from service.protocol.ops import CreateSession, Feed, Health, LiveSessions, Logits, Predict
from service.transport import host as host_module
from service.transport import wire
from service.transport.remote import EngineGone
from tests.service.conftest import CLS, LM, ClientFactory, app_of
from tests.service.transport.conftest import Wired, hosted


async def test_answers_over_the_wire_are_the_in_process_answers(
    wired: Wired,
) -> None:
    local = wired.local
    worker = wired.worker
    m = worker.catalog.get(CLS)
    rows = [m.encode_full(t, "t") for t in ("a wonderful film", "dull")]
    assert await worker.call(Predict(CLS, rows, 3)) == await local.call(Predict(CLS, rows, 3))
    ids = [[1, 2, 3], [4]]
    far, near = await worker.call(Logits(LM, ids)), await local.call(Logits(LM, ids))
    assert far.dtype == np.float32 and np.array_equal(far, near)
    assert await worker.call(Health()) == {}
    for sid, client in (("w", worker), ("l", local)):
        await client.call(CreateSession(LM, sid, None, None, None))
    a = await worker.call(Feed("w", "to be", 3, None, None, None))
    b = await local.call(Feed("l", "to be", 3, None, None, None))
    assert msgspec.structs.replace(a, session_id="l") == b
    assert await worker.call(LiveSessions()) == 2


async def test_a_string_that_cannot_cross_is_refused_naming_its_field(
    wired: Wired,
) -> None:
    local = wired.local
    worker = wired.worker
    await worker.call(CreateSession(LM, "s", None, None, None))
    with pytest.raises(InvalidInput) as far:
        await worker.call(Feed("s", "bad \ud800 text", 3, None, None, None))
    with pytest.raises(InvalidInput) as near:
        await local.call(Feed("s", "bad \ud800 text", 3, None, None, None))
    assert (far.value.code, far.value.field) == (near.value.code, near.value.field)
    assert far.value.field == "text"


async def test_once_the_engine_is_gone_every_call_fails_at_once(
    wired: Wired, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = wired.local
    worker = wired.worker
    started = asyncio.Event()
    real = local.call

    async def stuck(op: object) -> object:  # the engine process froze mid-call
        started.set()
        await asyncio.Event().wait()
        return await real(op)  # pragma: no cover

    monkeypatch.setattr(local, "call", stuck)
    waiting = asyncio.create_task(worker.call(LiveSessions()))
    await started.wait()
    worker.engine_gone()  # the supervisor's SIGUSR1
    with pytest.raises(EngineGone) as e:
        await waiting
    assert (e.value.status, e.value.code) == (503, "engine_unavailable")
    with pytest.raises(EngineGone):
        await worker.call(LiveSessions())
    problems = await engine_problems(worker)
    assert "engine" in problems and "died" in problems["engine"]


async def test_an_engine_speaking_another_wire_version_is_refused(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = host_module.catalog_info

    def older(c: object, generation: int = 0) -> wire.CatalogInfo:
        info = real(c, generation)  # type: ignore[arg-type]
        return msgspec.structs.replace(info, wire_version=wire.WIRE_VERSION - 1)

    async with make_client() as c:
        local = app_of(c).state.local
        monkeypatch.setattr(host_module, "catalog_info", older)  # only the host started here
        with pytest.raises(
            RuntimeError,
            match=f"wire version {wire.WIRE_VERSION - 1}, this worker {wire.WIRE_VERSION}",
        ):
            async with hosted(local):
                pass  # pragma: no cover
