"""The Redis deployments `bench.store` compares, started locally for a block: one primary with a
replica, and a cluster of 3 primaries with a replica each (the tests' own, `tests/loopback.py`
and `tests/redis_cluster.py`), optionally on CPUs of their own."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the tests' local Redis and cluster (not part of the service)

from tests.loopback import REDIS_SERVER, RedisProcess, RedisReplica, wait_until  # noqa: E402
from tests.redis_cluster import RedisCluster  # noqa: E402


@contextlib.contextmanager
def stores(
    redis_cpus: set[int] | None = None,
) -> Iterator[tuple[RedisProcess, RedisReplica, RedisCluster]]:
    """One primary with a replica (as in production, and as each cluster shard has: the
    replication work is then the same on both sides) and a cluster of 3 primaries with a
    replica each, all local, for the block. `redis_cpus`: every Redis process runs on these
    CPUs only, and this process (with what it starts from now on: the servers, the load) on
    the others."""
    with tempfile.TemporaryDirectory() as tmp:
        one = RedisProcess(Path(tmp))
        one.start()
        replica = _replica_of(one, Path(tmp) / "replica")
        cluster = RedisCluster(Path(tmp) / "cluster")
        cluster.start()
        mine = os.sched_getaffinity(0)
        try:
            if redis_cpus is not None:
                assert one.proc is not None and replica.proc is not None
                for proc in [one.proc, replica.proc, *cluster.procs.values()]:
                    for task in Path(f"/proc/{proc.pid}/task").iterdir():  # (every thread)
                        os.sched_setaffinity(int(task.name), redis_cpus)
                os.sched_setaffinity(0, mine - redis_cpus)
            yield one, replica, cluster
        finally:
            os.sched_setaffinity(0, mine)
            cluster.stop()
            replica.stop()
            one.stop()


def _replica_of(primary: RedisProcess, folder: Path) -> RedisReplica:
    replica = RedisReplica(folder, primary.port)
    wait_until(lambda: "state=online" in _cli(primary.port, "INFO", "replication"), 30, "sync")
    return replica


def _cli(port: int, *args: str) -> str:
    cli = str(Path(REDIS_SERVER).with_name("redis-cli"))
    return subprocess.run([cli, "-p", str(port), *args], capture_output=True, text=True).stdout
