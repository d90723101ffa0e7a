"""Acknowledged writes (`redis_wait.py`, `RNNSERVE_REDIS_WAIT_REPLICAS`) against a real
`redis-server`: one primary with no replica, and a Redis Cluster whose primaries have one each."""

from __future__ import annotations

import pytest

from service.errors import StoreUnavailable
from tests.service.redis_server import Target, _cluster, any_redis, rec, redis_server, two_stores

pytestmark = pytest.mark.redis
__all__ = ["_cluster", "any_redis", "redis_server"]  # the fixtures, used by name


async def test_with_wait_a_change_is_answered_once_a_replica_has_it(any_redis: Target) -> None:
    """`wait_replicas`: a change is acknowledged only once a replica has it. The test cluster's
    primaries have a replica each; the lone primary has none, so there the change stands on the
    primary but is never confirmed: 503, and a retry finds it."""
    async with two_stores(any_redis, wait_replicas=1, wait_timeout_s=0.3) as (a, b):
        if not any_redis.cluster:
            with pytest.raises(StoreUnavailable, match="reached 0 of 1 replicas"):
                await a.create(rec("w"))
            assert (await b.get("w")).version == 0  # it stands on the primary
            return
        for i in range(8):  # sessions on every shard
            await a.create(rec(f"w{i}"))
            await b.commit(rec(f"w{i}", version=1), 0)
        await a.delete("w0")
        assert await b.count() == 7
