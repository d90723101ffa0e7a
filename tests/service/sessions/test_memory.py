from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.errors import (
    SessionEvicted,
    SessionExists,
    SessionExpired,
    SessionLimit,
    SessionNotFound,
    VersionConflict,
)
from service.sessions import IdempotencyRecord, MemoryStore, SessionRecord
from tests.service.conftest import FakeClock


def rec(sid: str, clock: FakeClock, ttl: float = 10.0, version: int = 0) -> SessionRecord:
    now = clock()
    return SessionRecord(
        sid,
        "m",
        "0" * 64,
        version,
        (np.zeros((1, 1, 2), np.float32),),
        "",
        None,
        now,
        ttl,
        now + ttl,
    )


async def test_ttl_expiry_is_distinct_from_unknown(clock: FakeClock) -> None:
    store = MemoryStore(10, clock=clock)
    await store.create(rec("a", clock))
    clock.advance(9)
    await store.get("a")  # refreshes the idle TTL
    clock.advance(9)
    assert (await store.get("a")).id == "a"
    clock.advance(10.5)
    with pytest.raises(SessionExpired):
        await store.get("a")
    with pytest.raises(SessionExpired):  # remembered, not silently fresh
        await store.get("a")
    with pytest.raises(SessionNotFound):
        await store.get("never")
    assert await store.count() == 0


async def test_cap_refuses_or_evicts_lru(clock: FakeClock) -> None:
    store = MemoryStore(2, clock=clock)
    await store.create(rec("a", clock))
    await store.create(rec("b", clock))
    with pytest.raises(SessionLimit) as e:
        await store.create(rec("c", clock))
    assert e.value.headers["Retry-After"]
    lru = MemoryStore(2, evict="lru", clock=clock)
    await lru.create(rec("a", clock))
    await lru.create(rec("b", clock))
    await lru.get("a")  # b is now least recently used
    await lru.create(rec("c", clock))
    with pytest.raises(SessionEvicted):
        await lru.get("b")
    await lru.get("a")
    await lru.get("c")


async def test_expired_sessions_free_room(clock: FakeClock) -> None:
    store = MemoryStore(1, clock=clock)
    await store.create(rec("a", clock))
    clock.advance(11)
    await store.create(rec("b", clock))
    with pytest.raises(SessionExpired):
        await store.get("a")


async def test_commit_is_compare_and_set_with_idempotency(clock: FakeClock) -> None:
    store = MemoryStore(10, clock=clock)
    r0 = rec("a", clock)
    await store.create(r0)
    with pytest.raises(SessionExists):
        await store.create(rec("a", clock))
    idem = IdempotencyRecord("fp", {"x": 1}, clock() + 5)
    await store.commit(r0.replace(version=1), 0, ("k", idem))
    with pytest.raises(VersionConflict):
        await store.commit(r0.replace(version=1), 0)
    assert (await store.get("a")).version == 1
    assert await store.get_idempotent("a", "k") == idem
    clock.advance(6)
    await store.get("a")
    assert await store.get_idempotent("a", "k") is None
    await store.delete("a")
    with pytest.raises(SessionNotFound):
        await store.get("a")


async def test_lock_serializes_in_arrival_order(clock: FakeClock) -> None:
    store = MemoryStore(10, clock=clock)
    order: list[int] = []

    async def op(i: int) -> None:
        async with store.lock("s"):
            await asyncio.sleep(0.001 * (i % 3))
            order.append(i)

    await asyncio.gather(*(op(i) for i in range(20)))
    assert order == list(range(20))
    assert not store._locks  # cleaned up


async def test_a_caller_cancelled_while_waiting_never_holds_the_session(
    clock: FakeClock,
) -> None:
    """Cancelled while queued, or just as the session was handed to it: either way the next
    caller gets it, nobody holds it twice, and the store forgets the session once free."""
    store = MemoryStore(10, clock=clock)
    holding = 0
    order: list[str] = []
    first_in, release_first = asyncio.Event(), asyncio.Event()

    async def op(name: str, gate: asyncio.Event | None = None) -> None:
        nonlocal holding
        async with store.lock("s"):
            holding += 1
            assert holding == 1
            order.append(name)
            if gate is not None:
                first_in.set()
                await gate.wait()
            holding -= 1

    a = asyncio.create_task(op("a", release_first))
    await first_in.wait()
    b = asyncio.create_task(op("b"))  # queued, then cancelled while it waits
    c = asyncio.create_task(op("c"))  # queued: handed the session, cancelled before it runs
    d = asyncio.create_task(op("d"))
    await asyncio.sleep(0)
    b.cancel()
    release_first.set()
    await asyncio.sleep(0)  # a releases: the session goes to c (b's turn was cancelled)
    c.cancel()
    await asyncio.gather(a, b, c, d, return_exceptions=True)
    assert order == ["a", "d"] and b.cancelled() and c.cancelled()
    assert not store._locks


async def test_lock_now_takes_a_free_session_or_a_place_in_line_at_once(
    clock: FakeClock,
) -> None:
    store = MemoryStore(10, clock=clock)
    assert store.lock_now("s") is None  # free: taken
    order: list[str] = []

    async def op(name: str) -> None:
        async with store.lock("s"):
            order.append(name)

    x = asyncio.create_task(op("x"))
    await asyncio.sleep(0)  # x waits in line
    turn = store.lock_now("s")  # in line behind x, at once
    y = asyncio.create_task(op("y"))
    await asyncio.sleep(0)
    assert turn is not None and not turn.done() and order == []
    store.unlock("s")  # the holder's release: x's turn
    await x
    await turn  # then this caller's
    assert order == ["x"]
    store.unlock("s")
    await y
    assert order == ["x", "y"] and not store._locks


async def test_a_place_in_line_given_up_passes_the_session_on(clock: FakeClock) -> None:
    """`abandon`: a turn given up while it waits is skipped; one given up after it was handed
    the session releases it to the next in line."""
    store = MemoryStore(10, clock=clock)
    assert store.lock_now("s") is None
    waiting, handed = store.lock_now("s"), store.lock_now("s")
    assert waiting is not None and handed is not None
    store.abandon("s", waiting)
    store.unlock("s")  # to the first still in line: `handed`
    assert handed.done() and not handed.cancelled()
    later = asyncio.create_task(_hold(store, "s"))
    await asyncio.sleep(0)
    store.abandon("s", handed)  # handed the session, gives it up: `later` gets it
    await asyncio.wait_for(later, 5)
    assert not store._locks


@pytest.mark.parametrize("then", ["free", "taken"])
async def test_a_waiter_cancelled_before_the_session_went_on_ends_cancelled(
    clock: FakeClock, then: str
) -> None:
    """A waiting caller cancelled (its turn with it) before it runs again, while the holder
    releases (skipping that turn) and the session goes free or to a new caller: the waiter
    ends with its cancellation, nothing else, and never holds the session (as when a worker's
    calls are all cancelled at once, holder first)."""
    store = MemoryStore(10, clock=clock)
    assert store.lock_now("s") is None
    waiter = asyncio.create_task(_hold(store, "s"))
    while not store._locks["s"]:  # (queued: its turn is in the session's line)
        await asyncio.sleep(0)
    waiter.cancel()  # its turn is cancelled now; the task runs later
    store.unlock("s")
    if then == "taken":
        assert store.lock_now("s") is None
    with pytest.raises(asyncio.CancelledError):
        await waiter
    if then == "taken":
        store.unlock("s")
    assert not store._locks


async def _hold(store: MemoryStore, sid: str) -> None:
    async with store.lock(sid):
        pass


async def test_sweep_drops_expired(clock: FakeClock) -> None:
    store = MemoryStore(10, clock=clock, expired_memory_s=100)
    await store.create(rec("a", clock))
    await store.create(rec("b", clock, ttl=1000))
    clock.advance(11)
    assert await store.sweep() == 1
    assert await store.count() == 1
    clock.advance(200)
    await store.sweep()
    with pytest.raises(SessionNotFound):  # forgotten after expired_memory_s
        await store.get("a")


async def test_the_local_face_is_the_same_records_without_a_coroutine(clock: FakeClock) -> None:
    """`store.local` (what an unsampled feed batch reads and commits through): `get_now`
    refreshes the TTL and tells expired from unknown, `commit_now` is compare-and-set with its
    idempotency record, as the coroutines are (they are these calls)."""
    store = MemoryStore(10, clock=clock)
    local = store.local
    assert local is store
    r0 = rec("a", clock)
    await store.create(r0)
    clock.advance(9)
    assert local.get_now("a").expires_at == clock() + 10  # refreshed
    clock.advance(9)
    idem = IdempotencyRecord("fp", {"x": 1}, clock() + 5)
    done = local.commit_now(r0.replace(version=1), 0, ("k", idem))
    assert done.version == 1 and done.expires_at == clock() + 10
    with pytest.raises(VersionConflict):
        local.commit_now(r0.replace(version=1), 0)
    assert (await store.get("a")).version == 1
    assert local.get_idempotent_now("a", "k") == idem
    clock.advance(6)
    assert local.get_idempotent_now("a", "k") is None
    clock.advance(10.5)
    with pytest.raises(SessionExpired):
        local.get_now("a")
    with pytest.raises(SessionNotFound):
        local.get_now("never")
