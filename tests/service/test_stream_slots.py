"""The replica's stream caps (`service/engine/stream_slots.py`), held in the engine: counted for
all callers and per owner, and released when a worker lets go, over the wire as in process, or
when the engine forgets a dead worker's calls."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import Callable

import pytest

from service.engine.host import EngineHost
from service.engine.remote import RemoteClient, worker_identity
from service.engine.stream_slots import StreamSlots
from service.errors import Overloaded, StreamLimit
from tests.service.conftest import ClientFactory, app_of


def test_the_replica_cap_counts_everyone_and_the_key_cap_each_owner() -> None:
    slots = StreamSlots(max_open=3, max_per_owner=2)
    slots.acquire("a")
    slots.acquire("a")
    with pytest.raises(StreamLimit) as limit:
        slots.acquire("a")
    assert limit.value.status == 429 and limit.value.headers == {"Retry-After": "1"}
    slots.acquire(None)  # keys off: only the replica's cap
    with pytest.raises(Overloaded) as full:
        slots.acquire("b")
    assert "RNNSERVE_MAX_OPEN_STREAMS" in full.value.message
    assert slots.open == 3 and slots.held_by("a") == 2 and slots.held_by("b") == 0
    slots.release("a")
    slots.acquire("b")
    slots.release("a")
    slots.release("b")
    slots.release(None)
    assert slots.open == 0 and slots.held_by("a") == 0


async def _until(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not cond():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)


async def test_a_slot_held_over_the_wire_is_the_engines_and_comes_back(
    make_client: ClientFactory,
) -> None:
    async with make_client(engine_transport="zmq", max_open_streams=2) as c:
        app = app_of(c)
        slots: StreamSlots = app.state.local.slots
        remote = app.state.services.client
        assert isinstance(remote, RemoteClient)
        first = await remote.hold_stream("o")
        await remote.hold_stream(None)
        assert slots.open == 2
        with pytest.raises(Overloaded):  # the engine's error, raised again in the worker
            await remote.hold_stream("o")
        first.release()
        first.release()  # once only
        await _until(lambda: slots.open == 1)
        assert slots.held_by("o") == 0


async def test_a_dead_workers_slots_are_freed_by_forget_worker(
    make_client: ClientFactory,
) -> None:
    async with make_client(max_open_streams=4) as c:
        local = app_of(c).state.local
        with tempfile.TemporaryDirectory(prefix="rnnserve-test-") as d:
            host = EngineHost(local, f"ipc://{d}/engine.sock")
            serving = asyncio.create_task(host.serve())
            worker = RemoteClient(host.address)
            try:
                await worker.connect()
                for _ in range(3):
                    await worker.hold_stream("o")
                assert local.slots.open == 3
                # the supervisor's word that the worker died (SIGKILL: it could not release)
                assert host.forget_worker(worker_identity(os.getpid())) == 3
                await _until(lambda: local.slots.open == 0)
            finally:
                await worker.close()
                serving.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await serving
                await host.close()
