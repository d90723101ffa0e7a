"""A real `redis-server` for tests (skipped without the binary), and what the store tests share:
two `RedisStore` "replicas" on one server, and a sample session record."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.engine.sessions import SessionRecord
from service.engine.sessions.redis_store import RedisStore

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisProcess:
    """A throwaway redis-server on loopback with append-only persistence (survives a restart)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.dir),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--protected-mode",
                "yes",
                "--daemonize",
                "no",
                "--logfile",
                str(self.dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as c,
            ):
                c.sendall(b"PING\r\n")
                if c.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is not installed (scripts/system-deps.sh installs it)")
    server = RedisProcess(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def two_stores(url: str, **kw: Any) -> AsyncIterator[tuple[RedisStore, RedisStore]]:
    """Two stores ("replicas") on one Redis; they share nothing but the server."""
    a = RedisStore(url, 100, socket_timeout_s=1.0, **kw)
    b = RedisStore(url, 100, socket_timeout_s=1.0, **kw)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


def rec(sid: str, ttl: float = 30.0, version: int = 0, fill: float = 0.0) -> SessionRecord:
    now = time.time()
    return SessionRecord(
        sid,
        "m",
        "ab" * 32,
        version,
        (np.full((1, 1, 3), fill, np.float32), np.arange(6, dtype=np.float32).reshape(2, 1, 3)),
        "unfinished wo",
        np.linspace(-1, 1, 5).astype(np.float32),
        now,
        ttl,
        now + ttl,
        owner="key-1",
        tokens_seen=7,
    )
