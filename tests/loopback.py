"""Throwaway servers on 127.0.0.1 for tests: a free port, waiting for a server to answer,
stopping a subprocess for sure, and a real `redis-server` (the store tests and the deploy
cluster both start one)."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import redis.asyncio

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `check` until true; connection errors mean "not yet", anything else propagates."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, httpx.TransportError):
            if check():
                return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not up after {timeout:.0f} s")


def stop_process(
    proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, wait: float = 15
) -> None:
    """Send `sig` and reap; a process that ignores it is killed, so no test leaves one behind."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


class RedisProcess:
    """redis-server on loopback with an fsync-always append-only file, so a stop/start on the
    same port and directory keeps the sessions."""

    cluster = False  # (`RedisStore(cluster=...)`; see `redis_cluster.RedisCluster`)

    def __init__(self, workdir: Path, binary: str = REDIS_SERVER) -> None:
        self.binary, self.dir, self.port = binary, workdir, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def raw(self) -> redis.asyncio.Redis:
        return redis.asyncio.Redis.from_url(self.url)

    async def config_set(self, name: str, value: int) -> None:
        async with self.raw() as r:
            await r.config_set(name, value)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _pong(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.3) as c:
            c.sendall(b"PING\r\n")
            return c.recv(16).startswith(b"+PONG")

    def start(self) -> None:
        # protected mode and noeviction are Redis's defaults, spelled out because the tests rely
        # on them: loopback only, and a full server refuses writes rather than drop sessions
        self.proc = subprocess.Popen(
            [
                self.binary,
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
                "--maxmemory-policy",
                "noeviction",
                "--daemonize",
                "no",
                "--logfile",
                str(self.dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._pong, 15, "redis-server")

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing, as a stalled node or a
        network partition looks to a client (unlike `stop`, which refuses connections)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
        stop_process(self.proc)
        self.proc = None


class RedisReplica:
    """redis-server on loopback replicating `primary_port` (append-only file, no snapshots)."""

    def __init__(self, folder: Path, primary_port: int, binary: str = REDIS_SERVER) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(folder),
             "--replicaof", "127.0.0.1", str(primary_port), "--appendonly", "yes", "--save", ""],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self) -> None:
        stop_process(self.proc)
