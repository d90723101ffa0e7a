"""The Redis store on one primary with a replica behind Sentinel (`RNNSERVE_REDIS_SENTINELS`), a
real one on loopback: 3 sentinels, `kill -9` of the primary. The sentinels promote the replica,
the store finds it on its next calls (503 meanwhile), no acknowledged change is lost (written
with `WAIT 1`), and once the old primary is back (Sentinel makes it the new primary's replica)
changes are acknowledged again."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.errors import StoreUnavailable
from service.sessions.redis_store import RedisStore
from tests.loopback import (
    REDIS_SERVER,
    RedisProcess,
    RedisReplica,
    free_port,
    stop_process,
    wait_until,
)
from tests.service.redis_server import rec

pytestmark = pytest.mark.redis
REDIS_CLI = str(Path(REDIS_SERVER).with_name("redis-cli"))
MASTER = "rnnserve-test"


def cli(port: int, *args: str) -> str:
    return subprocess.run(
        [REDIS_CLI, "-p", str(port), *args], capture_output=True, text=True, timeout=10
    ).stdout


def sentinel(folder: Path, primary: int) -> tuple[int, subprocess.Popen[bytes]]:
    folder.mkdir()
    port = free_port()
    conf = folder / "sentinel.conf"  # (Sentinel rewrites it: its own file)
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
        f"sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n"
        f"sentinel down-after-milliseconds {MASTER} 1000\n"
        f"sentinel failover-timeout {MASTER} 5000\n"
    )
    proc = subprocess.Popen(
        [REDIS_SERVER, str(conf), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return port, proc


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[tuple[RedisProcess, RedisReplica, list[int]]]:
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is not installed (scripts/system-deps.sh installs it)")
    primary = RedisProcess(tmp_path / "primary")
    (tmp_path / "primary").mkdir()
    primary.start()
    replica = RedisReplica(tmp_path / "replica", primary.port)
    watchers = [sentinel(tmp_path / f"sentinel-{i}", primary.port) for i in range(3)]
    ports = [p for p, _ in watchers]
    try:
        wait_until(lambda: "state=online" in cli(primary.port, "INFO", "replication"), 30, "sync")
        # every sentinel knows the replica and the two other sentinels
        wait_until(
            lambda: all(
                "num-other-sentinels\n2" in cli(p, "SENTINEL", "master", MASTER)
                and "num-slaves\n1" in cli(p, "SENTINEL", "master", MASTER)
                for p in ports
            ),
            30,
            "the sentinels",
        )
        yield primary, replica, ports
    finally:
        for _, proc in watchers:
            stop_process(proc)
        replica.stop()
        primary.stop()


async def _until_served(op: object, within_s: float = 30) -> object:
    """Retry a store call that answers 503 while the failover runs, as a client would."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return await op()  # type: ignore[operator]
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_a_sentinel_failover_loses_no_acknowledged_change(
    sentinels: tuple[RedisProcess, RedisReplica, list[int]],
) -> None:
    primary, replica, ports = sentinels
    store = RedisStore(
        "redis://unused",
        100,
        socket_timeout_s=3.0,
        sentinels=[("127.0.0.1", p) for p in ports],
        sentinel_master=MASTER,
        wait_replicas=1,
        wait_timeout_s=2.0,  # (a busy shared machine can lag the replica by a good while)
    )
    try:
        for i in range(20):
            await store.create(rec(f"s{i}"))
            async with store.lock(f"s{i}"):
                await store.commit(rec(f"s{i}", version=1), 0)  # acknowledged: on the replica
        primary.proc.kill()  # kill -9: no goodbye
        primary.proc.wait(5)
        wait_until(
            lambda: (
                str(replica.port) in cli(ports[0], "SENTINEL", "get-master-addr-by-name", MASTER)
            ),
            30,
            "the failover",
        )
        for i in range(20):  # every acknowledged change is there, on the new primary
            got = await _until_served(lambda i=i: store.get(f"s{i}"))
            assert got.version == 1  # type: ignore[attr-defined]
        # the new primary has no replica yet: a change is not acknowledged (503) ...
        with pytest.raises(StoreUnavailable, match="reached 0 of 1 replicas"):
            async with store.lock("s0"):
                await store.commit(rec("s0", version=2), 1)
        # ... until the old primary is back: Sentinel makes it the new one's replica
        primary.start()
        wait_until(lambda: "state=online" in cli(replica.port, "INFO", "replication"), 30, "sync")
        for i in range(1, 20):
            async with store.lock(f"s{i}"):
                await store.commit(rec(f"s{i}", version=2), 1)
        # s0's unacknowledged change stands on the primary: a retry of it conflicts, visibly
        assert (await store.get("s0")).version == 2
    finally:
        await store.close()
