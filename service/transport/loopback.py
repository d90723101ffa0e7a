"""The wire that `--workers` uses, inside one process: an `EngineHost` for an in-process engine on a
private IPC socket, and a `RemoteClient` to it (`RNNSERVE_ENGINE_TRANSPORT=wire`, which the tests
run every suite with)."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from service.engine.local import InProcessClient
from service.settings import Settings
from service.transport.host import EngineHost
from service.transport.remote import RemoteClient


@asynccontextmanager
async def wire_loopback(local: InProcessClient, settings: Settings) -> AsyncIterator[RemoteClient]:
    """An `EngineHost` for `local` on a private IPC socket, and a `RemoteClient` to it."""

    with tempfile.TemporaryDirectory(prefix="rnnserve-wire-") as d:
        address = f"ipc://{d}/engine.sock"
        host = EngineHost(local, address)
        serving = asyncio.create_task(host.serve())
        remote = RemoteClient(address, settings.stream_buffer_bytes)
        try:
            await remote.connect()
            yield remote
        finally:
            await remote.close()
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
            await host.close()
