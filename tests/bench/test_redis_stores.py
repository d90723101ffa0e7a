"""bench/redis_stores.py: the Redis deployments `bench.store` compares, started locally, and on
CPUs of their own when asked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import redis_stores
from tests.loopback import REDIS_SERVER

pytestmark = pytest.mark.redis


@pytest.mark.timeout(120)
def test_redis_on_cpus_of_its_own_and_this_process_on_the_rest_until_the_end() -> None:
    """`--redis-cpus`: every Redis process (the primary, its replica, the cluster's six) on the
    CPUs given, this process (and what it starts: the servers, the load) on the others, and
    its own CPUs back once the stores are stopped."""
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is not installed (scripts/system-deps.sh installs it)")
    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2:
        pytest.skip("one CPU: nothing to split")
    last = {max(cpus)}
    with redis_stores.stores(last) as (one, replica, cluster):
        assert one.proc is not None and replica.proc is not None
        pids = [one.proc.pid, replica.proc.pid, *(p.pid for p in cluster.procs.values())]
        assert len(pids) == 8
        tasks = [int(t.name) for pid in pids for t in Path(f"/proc/{pid}/task").iterdir()]
        assert all(os.sched_getaffinity(t) == last for t in tasks)  # (each thread of each)
        assert os.sched_getaffinity(0) == cpus - last
    assert os.sched_getaffinity(0) == cpus
