"""What `RedisStore` reads with the leases it holds (`redis_holds.py`), against a real
`redis-server` on one primary and on a Redis Cluster: the session's read and a keyed request's
idempotency record come with the lease, are used by the holder's task only and never once the
holder changed the session; a commit that fails, or runs in another task, leaves no lease."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis.asyncio

from service.errors import SessionNotFound, StoreUnavailable
from service.sessions.record import IdempotencyRecord
from service.sessions.redis_store import RedisStore
from tests.loopback import RedisProcess
from tests.service.redis_server import (
    Target,
    _cluster,
    any_redis,
    rec,
    redis_server,
    two_stores,
)

pytestmark = pytest.mark.redis
__all__ = ["Target", "_cluster", "any_redis", "redis_server"]  # the fixtures, used by name


async def test_the_read_taken_with_the_lease_is_never_out_of_date(
    stores: tuple[RedisStore, RedisStore],
) -> None:
    """The holder's first read is the one made as the lease was granted; after a change of its
    own (a commit, a delete) it reads Redis again, and another task's read never takes it."""
    a, b = stores
    await a.create(rec("r"))
    async with a.lock("r"):
        # another task's read is a read of its own: the holder's read stays for the holder
        await asyncio.create_task(a.get("r"))
        assert a._holds._held["r"].lease.read is not None
        cur = await a.get("r")
        assert cur.version == 0 and a._holds._held["r"].lease.read is None
    async with a.lock("r"):  # a commit before any read: the read made with the lease is old
        await a.commit(cur.replace(version=1), 0)
        assert (await a.get("r")).version == 1
    async with a.lock("r"):
        await a.delete("r")
        with pytest.raises(SessionNotFound):
            await a.get("r")
    await b.create(rec("r"))  # (another replica)
    async with a.lock("r"):  # created again by its holder: the read ("missing") is old
        await a.delete("r")
        await a.create(rec("r", version=5))
        assert (await a.get("r")).version == 5


async def test_a_keyed_request_reads_its_idempotency_record_with_the_lease(
    stores: tuple[RedisStore, RedisStore],
) -> None:
    """`lock(id, key)`: the record an `Idempotency-Key` replays is read in the lease's own call
    (no lookup of its own), for that key only, and never once the holder changed it."""
    a, _ = stores
    await a.create(rec("k"))
    stored = IdempotencyRecord("fp", {"version": 1}, time.time() + 60)
    async with a.lock("k"):
        cur = await a.get("k")
        await a.commit(cur.replace(version=1), 0, ("key-1", stored))
    lookups: list[str] = []
    hget = a._r.hget

    def counted(name: str, key: str) -> Any:
        lookups.append(key)
        return hget(name, key)

    a._r.hget = counted  # type: ignore[method-assign,assignment]
    async with a.lock("k", "key-1"):
        assert (await a.get("k")).version == 1
        got = await a.get_idempotent("k", "key-1")
        assert got is not None and got.result == {"version": 1}
        assert lookups == []  # read with the lease
        assert await a.get_idempotent("k", "key-2") is None  # another key: looked up
        assert lookups == ["key-2"]
    async with a.lock("k", "key-3"):  # a key with no record: read (as none) with the lease
        assert await a.get_idempotent("k", "key-3") is None
        await a.put_idempotent("k", "key-3", stored)
        assert await a.get_idempotent("k", "key-3") is not None  # changed since: looked up
    assert lookups == ["key-2", "key-3"]


async def test_a_commit_that_fails_or_runs_elsewhere_leaves_no_lease(
    redis_server: RedisProcess,
) -> None:
    """A commit answered with an error (here `WAIT` finding no replica) and a commit from a
    task other than the holder's (a generation commits from its stream's task) give the lease
    up when the lock is left, as any holder does."""
    async with two_stores(redis_server) as (a, _):
        await a.create(rec("f"))
    async with two_stores(redis_server, wait_replicas=1, wait_timeout_s=0.05) as (a, _):
        lock = a.layout.key("f", "lock")
        raw = redis.asyncio.Redis(port=redis_server.port)
        try:
            async with a.lock("f"):
                cur = await a.get("f")
                with pytest.raises(StoreUnavailable):
                    await a.commit(cur.replace(version=1), 0)
            assert await raw.exists(lock) == 0
        finally:
            await raw.aclose()
    async with two_stores(redis_server) as (a, b):
        async with a.lock("f"):
            cur = await a.get("f")  # (version 1: the refused change stands on the primary)
            await asyncio.create_task(a.commit(cur.replace(version=cur.version + 1), cur.version))
            assert a._holds._held["f"].lease.released is False  # not the holder's call: still held
        async with asyncio.timeout(2.0):
            async with b.lock("f"):
                assert (await b.get("f")).version == cur.version + 1
