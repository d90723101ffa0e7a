from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from service.engine.local import InProcessClient
from service.transport import wire
from service.transport.host import EngineHost
from service.transport.remote import RemoteClient
from tests.service.conftest import ClientFactory, app_of


async def until(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait for `cond` (checked at each turn of the loop), at most `timeout_s`."""
    async with asyncio.timeout(timeout_s):
        while not cond():
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def hosted(
    local: InProcessClient, **remote: object
) -> AsyncIterator[tuple[EngineHost, RemoteClient]]:
    """An `EngineHost` serving `local` on a private IPC socket and a connected `RemoteClient`."""
    with tempfile.TemporaryDirectory(prefix="rnnserve-test-") as d:
        host = EngineHost(local, f"ipc://{d}/engine.sock")
        serving = asyncio.create_task(host.serve())
        worker = RemoteClient(host.address, **remote)  # type: ignore[arg-type]
        try:
            await worker.connect(timeout_s=10)
            yield host, worker
        finally:
            await worker.close()
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
            await host.close()


@dataclass(frozen=True)
class Wired:
    local: InProcessClient  # the engine, in this process
    host: EngineHost  # serving it on a private IPC socket
    worker: RemoteClient  # connected to the host


@pytest.fixture
async def wired(make_client: ClientFactory) -> AsyncIterator[Wired]:
    """An app's engine (fixture models, default settings), a host for it and a worker's client."""
    async with make_client() as c:
        local: InProcessClient = app_of(c).state.local
        async with hosted(local) as (host, worker):
            yield Wired(local, host, worker)


def sent_frames(host: EngineHost, monkeypatch: pytest.MonkeyPatch) -> list[wire.Frame]:
    """Every frame the host sends from now on, in order (its socket bypassed)."""
    sent: list[wire.Frame] = []
    monkeypatch.setattr(
        host._channel, "_send", lambda _ident, raw: sent.extend(wire.frames_decoder.decode(raw))
    )
    return sent
