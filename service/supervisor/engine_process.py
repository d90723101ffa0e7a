"""The engine process (`rnnserve-engine`): models, schedulers, sampling, every session rule and the
store, serving the API workers over its ZeroMQ ROUTER socket (`transport/host.py`) until the
supervisor says stop (or goes away)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import Coroutine
from multiprocessing.connection import Connection
from typing import Any

from service import tracing
from service.engine.startup import running_engine
from service.heap import freeze_startup_heap
from service.logging import configure_logging, get_logger
from service.metrics import Metrics
from service.settings import Settings
from service.supervisor.control import Forget, Ready, Stop, name_process
from service.transport.host import EngineHost
from service.transport.remote import worker_identity

log = get_logger("supervisor")


def engine_main(settings: dict[str, Any], address: str, conn: Connection) -> None:
    """Target of the engine process: serve until told to stop (or the supervisor goes)."""
    name_process("rnnserve-engine")
    s = Settings(**settings)
    configure_logging(s.log_level, s.log_json)
    sys.setswitchinterval(s.gil_switch_interval_ms / 1000)
    tracing.configure("engine")  # (on only when the OTEL_* environment says so)
    try:
        _run_loop(_engine(s, address, conn))
    finally:
        tracing.shutdown()  # its last spans exported (a child process runs no atexit)


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """uvloop when installed (uvicorn[standard] brings it; the workers run on it too): the
    engine thread wakes the loop once per decode step, and asyncio's wake-up (a write to its
    self-pipe) gives up the GIL, which the engine thread then waits to take back, a ninth of
    the engine's samples at 256 streams (py-spy); uvloop's does not."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover (uvicorn without [standard])
        asyncio.run(main)
        return
    uvloop.run(main)


async def _engine(settings: Settings, address: str, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # the supervisor decides when the engine stops (after the workers drained)
        loop.add_signal_handler(sig, lambda: None)
    async with running_engine(settings, Metrics()) as client:
        host = EngineHost(client, address)
        serving = asyncio.create_task(host.serve())

        def control() -> None:  # the supervisor's messages, read off the loop
            try:
                while True:
                    msg = conn.recv()
                    if isinstance(msg, Forget):
                        loop.call_soon_threadsafe(_forget, host, msg.pid)
                    elif isinstance(msg, Stop):
                        break
            except (EOFError, OSError):
                pass  # the supervisor is gone: stop too
            loop.call_soon_threadsafe(stop.set)

        threading.Thread(target=control, name="engine-control", daemon=True).start()
        freeze_startup_heap()
        conn.send(Ready(sorted(client.catalog.models)))
        await stop.wait()
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        await host.close()


def _forget(host: EngineHost, pid: int) -> None:
    n = host.forget_worker(worker_identity(pid))
    log.warning("worker gone; its calls cancelled", extra={"pid": pid, "calls": n})
