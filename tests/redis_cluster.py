"""A real Redis Cluster on loopback: 3 primaries with a replica each (6 `redis-server` processes,
`redis-cli --cluster create`), for the tests that run the session store on a cluster and kill
its nodes. Each node has its own folder and an fsync-always append-only file, like
`loopback.RedisProcess`."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis.asyncio

from tests.loopback import REDIS_SERVER, stop_process, wait_until

REDIS_CLI = str(Path(REDIS_SERVER).with_name("redis-cli"))
NODE_TIMEOUT_MS = 1000  # how long a primary may be silent before its replica takes over


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports(n: int) -> list[int]:
    """`n` ports whose cluster bus ports (+10000) are free too, both below the kernel's
    ephemeral range (32768 up): a port a test frees while it restarts a node is not taken by
    some client's connection meanwhile."""
    out: list[int] = []
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        start = 10000 + s.getsockname()[1] % 11000
    for port in range(start, 22000):
        if _free(port) and _free(port + 10000):
            out.append(port)
            if len(out) == n:
                return out
    raise RuntimeError("no free ports for a Redis Cluster")


class RedisCluster:
    """The same test interface as `loopback.RedisProcess` (url, pause, resume, stop, start),
    applied to every node, plus the cluster's own (kill one node, wait for a failover)."""

    cluster = True  # (`RedisStore(cluster=...)`)

    def __init__(self, workdir: Path, primaries: int = 3) -> None:
        self.dir = workdir
        self.ports = _ports(primaries * 2)
        self.primaries = primaries
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.created = False

    def raw(self) -> redis.asyncio.RedisCluster:
        return redis.asyncio.RedisCluster.from_url(self.url)

    async def config_set(self, name: str, value: int) -> None:
        """On every primary (a cluster client's CONFIG SET goes to one node otherwise)."""
        for port in self.primary_ports():
            async with redis.asyncio.Redis(port=port) as r:
                await r.config_set(name, value)

    def flush(self) -> None:
        for port in self.primary_ports():
            self.cli(port, "FLUSHALL")

    def pause(self) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGCONT)

    @property
    def url(self) -> str:
        """Any node: the client finds the others."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def cli(self, port: int, *args: str) -> str:
        return subprocess.run(
            [REDIS_CLI, "-p", str(port), *args], capture_output=True, text=True, timeout=30
        ).stdout

    def start_node(self, port: int) -> None:
        folder = self.dir / str(port)
        folder.mkdir(parents=True, exist_ok=True)
        options = {
            "bind": "127.0.0.1",
            "port": str(port),
            "dir": str(folder),
            "cluster-enabled": "yes",
            "cluster-config-file": "nodes.conf",
            "cluster-node-timeout": str(NODE_TIMEOUT_MS),
            "save": "",
            "appendonly": "yes",
            "appendfsync": "always",
            "maxmemory-policy": "noeviction",
            "logfile": str(folder / "redis.log"),
        }
        self.procs[port] = subprocess.Popen(
            [REDIS_SERVER, *(x for k, v in options.items() for x in (f"--{k}", v))],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: self.cli(port, "PING").strip() == "PONG", 15, "redis-server")

    def start(self) -> None:
        """Create the cluster, or (after `stop`) start its nodes again: each finds the others
        from its nodes.conf, and its data in its append-only file. A start that fails stops
        what it started."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        for port in self.ports:
            self.start_node(port)
        if self.created:
            self.wait_ok()
            self.wait_replicated()
            return
        self.created = True
        nodes = [f"127.0.0.1:{p}" for p in self.ports]
        out = subprocess.run(
            [REDIS_CLI, "--cluster", "create", *nodes, "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        self.wait_ok()
        self.wait_replicated()

    def wait_ok(self, within_s: float = 30) -> None:
        """Every live node says the cluster serves every slot."""

        def ok() -> bool:
            return all(
                "cluster_state:ok" in self.cli(p, "CLUSTER", "INFO")
                for p, proc in self.procs.items()
                if proc.poll() is None
            )

        wait_until(ok, within_s, "the cluster")

    def wait_replicated(self, within_s: float = 30) -> None:
        """Every primary has a replica that has synced with it (a new cluster's, or a
        failed-over one's new replica, syncs after the cluster says ok)."""

        def synced() -> bool:
            for port in self.primary_ports():
                info = self.cli(port, "INFO", "replication")
                if "connected_slaves:0" in info or "state=online" not in info:
                    return False
            return True

        wait_until(synced, within_s, "the cluster's replicas")

    def nodes(self) -> dict[int, str]:
        """Each node's port -> its flags, as a live node sees them (`CLUSTER NODES`)."""
        alive = next(p for p, proc in self.procs.items() if proc.poll() is None)
        out = self.cli(alive, "CLUSTER", "NODES")
        return {
            int(line.split()[1].split(":")[1].split("@")[0]): line.split()[2]
            for line in out.splitlines()
        }

    def primary_ports(self) -> list[int]:
        """The primaries serving (not failed, nor suspected of it)."""
        serving = []
        for port, flags in self.nodes().items():
            names = flags.split(",")
            if "master" in names and not any(f.startswith("fail") for f in names):
                serving.append(port)
        return sorted(serving)

    def kill(self, port: int) -> None:
        """kill -9: no goodbye to the others, as a lost machine."""
        proc = self.procs[port]
        proc.kill()
        proc.wait(5)

    def stop(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(Exception):
                proc.send_signal(signal.SIGCONT)  # a paused node cannot act on SIGTERM
                stop_process(proc)
        self.procs.clear()


def wait_failover(cluster: RedisCluster, dead: int, within_s: float = 60) -> float:
    """Seconds until the cluster has marked the dead primary failed (not only suspected it),
    a replica has taken its slots (as many primaries serve as before) and every live node says
    the cluster serves every slot."""
    t0 = time.monotonic()

    def taken_over() -> bool:
        flags = cluster.nodes()
        failed = "fail" in flags[dead] and "fail?" not in flags[dead]
        return failed and len(cluster.primary_ports()) == cluster.primaries

    wait_until(taken_over, within_s, "the failover")
    cluster.wait_ok(within_s)
    return time.monotonic() - t0
