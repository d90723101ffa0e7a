"""The Redis store's lock (`redis_lease.py`), against a real `redis-server` on one primary and on
a Redis Cluster: a lease that serializes two replicas' read-modify-write, granted in arrival
order, renewed while held, lost by a dead holder after at most one lease, and never granted to
a token its waiter forgot; taken with the session's read and given up with the holder's commit
(two calls to Redis a step), a retried commit still its own after the next holder's (what is
read with the lease: `test_redis_holds.py`)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest
import redis.asyncio

from service.errors import VersionConflict
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
__all__ = ["_cluster", "any_redis", "redis_server"]  # the fixtures, used by name


async def test_lock_serializes_read_modify_write_across_replicas(
    stores: tuple[RedisStore, RedisStore],
) -> None:
    """Many concurrent increments through two replicas: none lost, none doubled, no conflict."""
    a, b = stores
    await a.create(rec("ctr"))
    n = 24

    async def bump(store: RedisStore) -> None:
        async with store.lock("ctr"):
            cur = await store.get("ctr")
            await asyncio.sleep(0.002)  # widen the race window
            await store.commit(cur.replace(version=cur.version + 1), cur.version)

    await asyncio.gather(*(bump(a if i % 2 else b) for i in range(n)))
    assert (await a.get("ctr")).version == n

    # without the lock, the same race is caught by compare-and-set instead
    async def unlocked(store: RedisStore) -> bool:
        cur = await store.get("ctr")
        await asyncio.sleep(0.01)
        try:
            await store.commit(cur.replace(version=cur.version + 1), cur.version)
        except VersionConflict:
            return False
        return True

    wins = await asyncio.gather(unlocked(a), unlocked(b), unlocked(a), unlocked(b))
    assert sum(wins) == 1
    assert (await b.get("ctr")).version == n + 1


async def test_lock_grants_in_arrival_order_across_replicas(
    stores: tuple[RedisStore, RedisStore], any_redis: Target
) -> None:
    a, b = stores
    order: list[int] = []
    gate, release = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with a.lock("q"):
            gate.set()
            await release.wait()

    async def waiter(i: int) -> None:
        async with (a if i % 2 else b).lock("q"):
            order.append(i)

    h = asyncio.create_task(holder())
    await gate.wait()
    tasks = []
    raw = any_redis.raw()
    try:
        for i in range(6):
            tasks.append(asyncio.create_task(waiter(i)))
            # each has queued (in Redis's queue of the session) before the next arrives
            while await raw.zcard(a.layout.key("q", "q")) < i + 1:
                await asyncio.sleep(0.005)
    finally:
        await raw.aclose()
    release.set()
    await asyncio.gather(h, *tasks)
    assert order == list(range(6))


async def test_lease_is_renewed_while_held(stores: tuple[RedisStore, RedisStore]) -> None:
    a, b = stores
    got_it = False

    async def contender() -> None:
        nonlocal got_it
        async with b.lock("long"):
            got_it = True

    async with a.lock("long"):
        t = asyncio.create_task(contender())
        await asyncio.sleep(2.5)  # 2.5 leases: only renewal keeps b out
        assert not got_it
    await asyncio.wait_for(t, 2)
    assert got_it


async def test_a_dead_holder_blocks_for_at_most_one_lease(
    stores: tuple[RedisStore, RedisStore], any_redis: Target
) -> None:
    """A replica killed while holding the lease (no release, no renewal) stalls the session for
    at most one lease; its late commit is then refused by compare-and-set."""
    a, b = stores
    await a.create(rec("d"))
    raw = any_redis.raw()
    try:
        # what a kill -9 leaves behind: a lease with a token nobody will release or renew
        await raw.set(a.layout.key("d", "lock"), "dead-replica", px=1000)
        stale = await a.get("d")
        t0 = time.monotonic()
        async with b.lock("d"):
            waited = time.monotonic() - t0
            cur = await b.get("d")
            await b.commit(cur.replace(version=1), 0)
        assert 0.5 < waited < 4
        with pytest.raises(VersionConflict):
            await a.commit(stale.replace(version=1, pending="stale"), 0)
        assert (await a.get("d")).pending == "unfinished wo"
        # a waiter that went away (cancelled) does not hold up the ones behind it
        async with a.lock("d"):
            gone = asyncio.create_task(b.lock("d").__aenter__())
            await asyncio.sleep(0.05)
            gone.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gone
        t0 = time.monotonic()
        async with b.lock("d"):
            assert time.monotonic() - t0 < 1.5  # under the 2 s a dead waiter would cost
        assert sum([await raw.exists(a.layout.key("d", k)) for k in ("q", "w", "lock")]) == 0
    finally:
        await raw.aclose()


async def test_a_forgotten_token_is_never_granted_in_either_order(
    stores: tuple[RedisStore, RedisStore], any_redis: Target
) -> None:
    """The two orders in which a failed request's buffered acquire and the janitor's cleanup can
    reach Redis: cleanup first leaves a tombstone that refuses the acquire; acquire first is
    undone by the cleanup."""
    from service.sessions import redis_lease, redis_scripts

    raw = any_redis.raw()
    acquire, forget = (
        raw.register_script(redis_scripts.READ + redis_lease._ACQUIRE),
        raw.register_script(redis_lease._FORGET),
    )
    try:
        for sid, forget_first in (("o1", True), ("o2", False)):
            lk, q, w = (stores[0].layout.key(sid, k) for k in ("lock", "q", "w"))
            keys = [lk, q, w, f"{lk}:x:tok"]
            s, g, _, live = stores[0]._keys(sid)
            take = {"keys": [*keys, s, g, live], "args": ["tok", 5000, 2000, sid, 1000]}
            if forget_first:
                await forget(keys=keys, args=["tok", 60_000])
                assert (await acquire(**take))[0] == 0
            else:
                assert (await acquire(**take))[0] == 1
                await forget(keys=keys, args=["tok", 60_000])
            assert sum([await raw.exists(k) for k in keys[:3]]) == 0
            t0 = time.monotonic()
            async with stores[1].lock(sid):
                assert time.monotonic() - t0 < 0.5
    finally:
        await raw.aclose()


async def test_a_step_is_two_calls_to_redis_and_leaves_no_queue_behind(
    redis_server: RedisProcess,
) -> None:
    """Lease with the session's read, commit with the lease's release: a step that finds its
    session free makes two calls (scripts) to Redis, and no waiters' queue."""
    async with two_stores(redis_server) as (a, _):
        await a.create(rec("t"))
        await a.create(rec("warm"))
        async with a.lock("warm"):  # (each script's first call loads it into Redis)
            await a.commit((await a.get("warm")).replace(version=1), 0)
        raw = redis.asyncio.Redis(port=redis_server.port)
        try:
            before = (await raw.info("commandstats"))["cmdstat_evalsha"]["calls"]
            async with a.lock("t"):
                cur = await a.get("t")
                await a.commit(cur.replace(version=1), 0)
            after = (await raw.info("commandstats"))["cmdstat_evalsha"]["calls"]
            assert after - before == 2
            assert not [k for k in await raw.keys("*") if k.endswith((b":q", b":w", b":lock"))]
            assert (await a.get("t")).version == 1
        finally:
            await raw.aclose()


async def test_the_lease_ends_with_its_holders_commit(
    stores: tuple[RedisStore, RedisStore], any_redis: Target
) -> None:
    """The next holder is granted as soon as the commit is done (not when the holder's block
    ends), and the first holder's end does not release the next one's lease."""
    a, b = stores
    await a.create(rec("c"))
    lock = a.layout.key("c", "lock")
    raw = any_redis.raw()
    try:
        async with a.lock("c"):
            cur = await a.get("c")
            await a.commit(cur.replace(version=1), 0)
            nxt = b.lock("c")
            async with asyncio.timeout(2.0):  # (a lease still held: b would wait for ever)
                await nxt.__aenter__()
        assert await raw.exists(lock) == 1  # b's lease, untouched by a's exit
        assert (await b.get("c")).version == 1
        await nxt.__aexit__(None, None, None)
        assert await raw.exists(lock) == 0
    finally:
        await raw.aclose()


async def test_a_commit_retried_after_the_next_holder_committed_is_still_its_own(
    stores: tuple[RedisStore, RedisStore],
) -> None:
    """The commit that gives the lease up lets the next holder in before its reply: when that
    reply is lost and redis-py sends the call again (the same nonce), the retry is answered
    as the success it was, not as a conflict with the next holder's version (which would have
    a client without an Idempotency-Key apply its change twice)."""
    a, b = stores
    await a.create(rec("n"))
    write = a._write
    retried: list[Any] = []

    async def reply_lost(script: Any, keys: list[str], args: list[Any]) -> Any:
        await write(script, keys, args)  # applied; its answer never arrives
        async with b.lock("n"):  # meanwhile another replica takes the lease and commits
            cur = await b.get("n")
            await b.commit(cur.replace(version=cur.version + 1), cur.version)
        retried.append(await write(script, keys, args))  # the same call again
        return retried[-1]

    async with a.lock("n"):
        cur = await a.get("n")
        a._write = reply_lost  # type: ignore[method-assign]
        try:
            done = await a.commit(cur.replace(version=1, pending="mine"), 0)
        finally:
            a._write = write  # type: ignore[method-assign]
    assert retried and retried[0][0] == b"ok" and done.version == 1
    now = await a.get("n")
    assert now.version == 2 and now.pending == "mine"  # once, then the other replica's step
