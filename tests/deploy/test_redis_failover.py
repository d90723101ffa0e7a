"""A Redis Cluster primary killed under load: two `rnnserve serve` replicas on a cluster of 3
primaries with a replica each (`RNNSERVE_REDIS_CLUSTER=true`, `RNNSERVE_REDIS_WAIT_REPLICAS=1`),
sessions feeding and generating through both, every request retried with its Idempotency-Key
on a 503 as `service.client` does. `kill -9` of a primary: its replica takes over; the requests
that reach its slots meanwhile answer 503 `store_unavailable` and their retries succeed; no
session is lost, and no acknowledged change is lost or applied twice (each session's version
afterwards is exactly its last acknowledged one). What a run saw is printed (docs/reliability.md
has the figures)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deploy.cluster import Replica, which
from tests.loopback import stop_process, wait_until
from tests.redis_cluster import RedisCluster, wait_failover

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.timeout(240)]

LM = "tiny-char-lstm"
FEEDERS, WRITERS = 12, 4


class Load:
    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.acked: dict[str, int] = {}  # session -> its last acknowledged version
        self.unavailable = 0  # 503 answers (each retried)
        self.rewound = 0  # answers whose version was not one past the last acknowledged one
        self.other: list[str] = []  # any other failure
        self.turn = 0

    def url(self) -> str:  # alternate replicas, as a load balancer would
        self.turn += 1
        return self.urls[self.turn % len(self.urls)]

    async def call(self, c: httpx.AsyncClient, path: str, body: dict[str, Any], key: str) -> Any:
        """The request, retried with the same Idempotency-Key on a 503 (for up to 30 s)."""
        deadline = time.monotonic() + 30
        while True:
            r = await c.post(self.url() + path, json=body, headers={"Idempotency-Key": key})
            if r.status_code == 200:
                return r.json()
            if r.status_code != 503 or time.monotonic() > deadline:
                self.other.append(f"{r.status_code} {r.text[:200]}")
                raise AssertionError(r.text)
            self.unavailable += 1
            await asyncio.sleep(0.05)

    async def session(self, c: httpx.AsyncClient, writes: bool, stop: asyncio.Event) -> None:
        r = await c.post(self.url() + "/v1/sessions", json={"model": LM})
        assert r.status_code == 201, r.text
        sid = r.json()["session_id"]
        n = 0
        while not stop.is_set():
            if writes:
                body = {"max_tokens": 8, "seed": n, "temperature": 1.0}
                out = await self.call(c, f"/v1/sessions/{sid}/generate", body, f"{sid}-{n}")
            else:
                body = {"text": "to be "}
                out = await self.call(c, f"/v1/sessions/{sid}/feed", body, f"{sid}-{n}")
            if out["version"] != self.acked.get(sid, 0) + 1:
                self.rewound += 1  # an acknowledged change the failover took away
            self.acked[sid] = out["version"]
            n += 1


def test_killing_a_primary_under_load_loses_no_session_and_no_acknowledged_change(
    tmp_path: Path, wait_replicas: int = 1
) -> None:
    """With `RNNSERVE_REDIS_WAIT_REPLICAS=1`: nothing acknowledged is lost. Run by hand with 0
    (the default; `pytest ... -k failover` after changing the argument's default), it says what
    was lost: changes the old primary acknowledged but had not yet replicated (on loopback
    replication mostly wins that race; across machines it may not). CI runs the guarantee."""
    if which("redis-server") is None:
        pytest.skip("needs redis-server (scripts/system-deps.sh installs it)")
    cluster = RedisCluster(tmp_path / "redis")
    cluster.start()  # (a start that fails stops what it started)
    env = {
        "RNNSERVE_REDIS_CLUSTER": "true",
        "RNNSERVE_REDIS_WAIT_REPLICAS": str(wait_replicas),
        "RNNSERVE_REDIS_TIMEOUT_S": "1",
    }
    replicas = [Replica(i, cluster.url, tmp_path, env) for i in range(2)]
    try:
        for r in replicas:
            r.start()
        for r in replicas:
            wait_until(r.ready, 90, f"replica {r.index}")
        load = Load([f"http://{r.addr}" for r in replicas])

        async def run() -> tuple[float, int, int]:
            stop = asyncio.Event()
            async with httpx.AsyncClient(timeout=30) as c:
                tasks = [
                    asyncio.create_task(load.session(c, i < WRITERS, stop))
                    for i in range(FEEDERS + WRITERS)
                ]

                def running() -> None:  # a client that failed ends the test, not a timeout
                    for t in tasks:
                        if t.done():
                            t.result()
                            raise AssertionError("a client stopped")

                while len(load.acked) < FEEDERS + WRITERS or min(load.acked.values()) < 3:
                    running()
                    await asyncio.sleep(0.05)
                before = dict(load.acked)
                victim = cluster.primary_ports()[0]
                cluster.kill(victim)
                failover_s = await asyncio.to_thread(wait_failover, cluster, victim)
                # the dead node comes back (as Kubernetes restarts a pod): a replica of the new
                # primary, so its shard has a replica again. Until then, with WAIT 1, changes
                # on that shard answer 503: acknowledged means on a replica.
                await asyncio.to_thread(cluster.start_node, victim)
                await asyncio.to_thread(cluster.wait_replicated)
                # every session moves on past the failover, then the load stops
                while any(load.acked[s] < v + 3 for s, v in before.items()):
                    running()
                    await asyncio.sleep(0.05)
                stop.set()
                await asyncio.gather(*tasks)
                # what the store holds now: each session, at its last acknowledged version?
                lost_sessions = lost_changes = 0
                for sid, version in load.acked.items():
                    r = await c.get(load.url() + f"/v1/sessions/{sid}")
                    if r.status_code == 404:
                        lost_sessions += 1
                    elif r.json()["version"] != version:
                        lost_changes += 1
                return failover_s, lost_sessions, lost_changes

        failover_s, lost_sessions, lost_changes = asyncio.run(run())
        print(
            f"\nWAIT {wait_replicas}: failover {failover_s:.1f} s; {load.unavailable} answers "
            f"503 (each retried); {len(load.acked)} sessions, {sum(load.acked.values())} "
            f"acknowledged changes: {lost_sessions} sessions lost, {load.rewound + lost_changes} "
            "acknowledged changes lost"
        )
        assert load.other == []  # every request answered 200 in the end
        if wait_replicas:
            assert (lost_sessions, lost_changes, load.rewound) == (0, 0, 0)
    finally:
        for r in replicas:
            stop_process(r.proc)
        cluster.stop()
