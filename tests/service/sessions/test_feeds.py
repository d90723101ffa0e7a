"""`sessions/feeds.py`: `feed_batch` runs the feeds read together as one, and each is exactly
the feed it would have been alone (outcome, order on one session, errors, replays, a caller
gone)."""

from __future__ import annotations

import asyncio
from collections.abc import Container, Sequence
from typing import Any

import numpy as np
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service import tracing
from service.engine.dispatch import batchers
from service.errors import EngineError, SessionNotFound, VersionConflict
from service.protocol.messages import FeedResult
from service.protocol.ops import CreateSession, Feed, GetSession, Reset
from service.sessions.redis_store import RedisStore
from service.sessions.service import SessionService
from service.sessions.store import store_id
from service.sessions.traced import TracedStore
from tests.service.conftest import LM
from tests.service.sessions.conftest import flaky


async def _sessions(svc: SessionService, n: int) -> list[str]:
    return [
        (await svc.create(CreateSession(LM, None, None, None, None))).session_id for _ in range(n)
    ]


def _feed(sid: str, text: str, **kw: Any) -> Feed:
    return Feed(sid, text, 3, kw.get("expected_version"), kw.get("key"), None)


async def _batch(
    svc: SessionService, ops: Sequence[Feed], gone: Container[int] = ()
) -> dict[int, Any]:
    """Run `ops` as one batch; each one's reply by index (a call replied twice would fail)."""
    got: dict[int, Any] = {}

    def reply(i: int, value: Any) -> None:
        assert i not in got, f"feed {i} replied twice"
        got[i] = value

    await svc.feed_batch(ops, reply, gone)
    return got


async def _state(svc: SessionService, sid: str) -> list[bytes]:
    """The session's committed state and logits, as bytes (compared bit for bit)."""
    rec = await svc.store.get(sid)
    logits = b"" if rec.logits is None else rec.logits.tobytes()
    return [s.tobytes() for s in rec.states] + [logits, rec.pending.encode()]


@pytest.mark.parametrize("records", ["local", "awaited"])
async def test_each_feed_of_a_batch_is_the_feed_it_would_be_alone(
    svc: SessionService, records: str
) -> None:
    """Read and committed through the store's local face (memory: no coroutine a call) or
    awaited (as a store without one, Redis, is): the same outcome as each feed alone."""
    if records == "awaited":
        store = TracedStore(svc.store)  # (tracing off: its calls go straight to the store)
        store.local = None
        svc = SessionService(
            svc.engine,
            store,
            default_ttl_s=60,
            max_ttl_s=600,
            idempotency_ttl_s=60,
            clock=svc.clock,
        )
    assert (svc.store.local is not None) == (records == "local")
    texts = ["To be", " or not", "x", "ROMEO:\n", "a" * 40]
    batched, alone = await _sessions(svc, len(texts)), await _sessions(svc, len(texts))
    got = await _batch(svc, [_feed(s, t) for s, t in zip(batched, texts, strict=True)])
    assert sorted(got) == list(range(len(texts)))
    for i, (b, a, t) in enumerate(zip(batched, alone, texts, strict=True)):
        want = await svc.feed(_feed(a, t))
        res = got[i]
        assert isinstance(res, FeedResult)
        assert (res.version, res.tokens, res.pending_chars) == (1, want.tokens, want.pending_chars)
        assert res.output == want.output  # the same numbers, bit for bit
        assert await _state(svc, b) == await _state(svc, a)
    # a keyed feed's record, stored by the batch's commit, replays it (and nothing runs)
    keyed = _feed(batched[0], " again", key="k1")
    (first,) = (await _batch(svc, [keyed])).values()
    retried = await svc.feed(keyed)
    assert retried.replayed and retried.version == first.version == 2
    assert retried.output == first.output
    assert (await svc.store.get(store_id(batched[0], None))).version == 2


async def test_feeds_of_one_session_in_a_batch_apply_in_the_order_read(
    svc: SessionService,
) -> None:
    """The first takes the session; the others wait their turn behind it, in order, and the
    state is the whole text's (chunked == whole)."""
    sid, other, whole = await _sessions(svc, 3)
    chunks = ["To b", "e or n", "ot to be"]
    got = await _batch(
        svc, [_feed(sid, chunks[0]), _feed(other, "x"), *(_feed(sid, c) for c in chunks[1:])]
    )
    assert [got[i].version for i in (0, 2, 3)] == [1, 2, 3]
    assert got[1].version == 1
    one = await svc.feed(_feed(whole, "".join(chunks)))
    probs = [p.prob for p in got[3].output.next]
    np.testing.assert_allclose(probs, [p.prob for p in one.output.next], atol=1e-5)
    assert [p.token for p in got[3].output.next] == [p.token for p in one.output.next]


async def test_a_feed_whose_session_is_busy_waits_for_it_and_the_rest_do_not(
    svc: SessionService,
) -> None:
    busy, free = await _sessions(svc, 2)
    got: dict[int, Any] = {}
    lock = svc.store.lock(busy)
    await lock.__aenter__()  # (another operation holds the session)
    run = asyncio.create_task(
        svc.feed_batch([_feed(busy, "a"), _feed(free, "b")], got.__setitem__, ())
    )
    async with asyncio.timeout(10):
        while 1 not in got:
            await asyncio.sleep(0.005)
    assert 0 not in got and (await svc.get(GetSession(busy, None))).version == 0
    await lock.__aexit__(None, None, None)
    await asyncio.wait_for(run, 10)
    assert got[0].version == 1 and got[1].version == 1


async def test_each_feeds_error_is_its_own(svc: SessionService) -> None:
    ok, stale = await _sessions(svc, 2)
    await svc.feed(_feed(stale, "a"))
    got = await _batch(
        svc,
        [
            _feed("no-such-session", "a"),
            _feed(stale, "b", expected_version=0),
            _feed(ok, "c"),
        ],
    )
    assert isinstance(got[0], SessionNotFound)
    assert isinstance(got[1], VersionConflict) and got[1].field == "expected_version"
    assert got[2].version == 1
    assert (await svc.get(GetSession(stale, None))).version == 1  # unchanged by its failed feed


async def test_a_retried_feed_in_a_batch_is_replayed_not_applied_again(
    svc: SessionService,
) -> None:
    (sid,) = await _sessions(svc, 1)
    first = await svc.feed(_feed(sid, "abc", key="k1"))
    before = await _state(svc, sid)
    got = await _batch(svc, [_feed(sid, "abc", key="k1")])
    assert got[0].replayed and got[0].version == first.version == 1
    assert await _state(svc, sid) == before


async def test_a_feed_whose_caller_went_commits_nothing(svc: SessionService) -> None:
    """`gone` (the worker's Cancel): its feed is not committed, whether it ran in the batch or
    waited for its session on its own; the others are."""
    sid, other = await _sessions(svc, 2)
    got = await _batch(svc, [_feed(sid, "a"), _feed(other, "b"), _feed(sid, "c")], gone={0, 2})
    assert set(got) == {1}
    assert (await svc.get(GetSession(sid, None))).version == 0
    assert (await svc.get(GetSession(other, None))).version == 1


async def test_an_engine_failure_fails_the_batchs_feeds_and_changes_no_session(
    svc: SessionService,
) -> None:
    a, b = await _sessions(svc, 2)
    await svc.feed(_feed(a, "x"))
    before = await _state(svc, a)
    flaky(svc).fail_after = flaky(svc).calls
    got = await _batch(svc, [_feed(a, "y"), _feed(b, "z")])
    assert all(isinstance(got[i], EngineError) for i in (0, 1))
    assert await _state(svc, a) == before
    assert (await svc.get(GetSession(b, None))).version == 0
    # the sessions were released: they serve again
    flaky(svc).fail_after = None
    assert (await svc.feed(_feed(a, "y"))).version == 2


@pytest.mark.parametrize("cancel_at", ["running", "waiting"])
async def test_a_cancelled_batch_releases_its_sessions(svc: SessionService, cancel_at: str) -> None:
    """The worker went (the host cancels the batch): no session stays locked, none committed."""
    a, b = await _sessions(svc, 2)
    lock = svc.store.lock(b)
    await lock.__aenter__()
    run = asyncio.create_task(svc.feed_batch([_feed(a, "x"), _feed(b, "y")], lambda *_: None, ()))
    if cancel_at == "waiting":  # (a's feed is through; b's still waits for its session)
        async with asyncio.timeout(10):
            while (await svc.get(GetSession(a, None))).version == 0:
                await asyncio.sleep(0.005)
    else:
        await asyncio.sleep(0)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    await lock.__aexit__(None, None, None)
    assert (await svc.get(GetSession(b, None))).version == 0
    assert (await svc.feed(_feed(a, "z"))).version in (1, 2)
    assert (await svc.feed(_feed(b, "z"))).version == 1


async def test_a_busy_sessions_feed_keeps_its_place_before_what_was_read_after_it(
    svc: SessionService,
) -> None:
    """The batch takes a busy session's place in line in its first step, so an operation
    read after it (started after the batch) comes after it, not before."""
    busy, other = await _sessions(svc, 2)
    got: dict[int, Any] = {}
    lock = svc.store.lock(busy)
    await lock.__aenter__()
    batch = asyncio.create_task(
        svc.feed_batch([_feed(busy, "a"), _feed(other, "b")], got.__setitem__, ())
    )
    later = asyncio.create_task(svc.reset(Reset(busy, None, None, None)))  # read after it
    async with asyncio.timeout(10):
        while 1 not in got:
            await asyncio.sleep(0.005)
    await lock.__aexit__(None, None, None)
    await asyncio.wait_for(batch, 10)
    reset = await asyncio.wait_for(later, 10)
    assert got[0].version == 1 and reset.version == 2


def test_batches_only_over_a_store_whose_locks_need_no_io(svc: SessionService) -> None:
    """A Redis lease cannot be taken (or queued for) without a round trip: each feed then
    runs as its own call. A traced store batches as the store it wraps does."""
    assert batchers(svc) == {Feed: svc.feed_batch}
    store = TracedStore(svc.store)
    traced = SessionService(
        svc.engine, store, default_ttl_s=60, max_ttl_s=600, idempotency_ttl_s=60
    )
    assert traced.batching and batchers(traced) == {Feed: traced.feed_batch}
    store.local_locks = False  # (as `RedisStore` says of its leases)
    assert not traced.batching and batchers(traced) == {}
    # (nor are its records read or written without a round trip)
    assert not RedisStore.local_locks and RedisStore.local is None


async def test_a_sampled_feeds_spans_in_a_batch_are_its_own_even_when_it_waited(
    svc: SessionService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each sampled feed of a batch records its store calls, queue wait and prefill under its
    own span (the host's `engine Feed`), the one that waited in its session's line too."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    exporter = InMemorySpanExporter()
    tracing.configure("server", processor=SimpleSpanProcessor(exporter))
    try:
        traced = SessionService(
            svc.engine,
            TracedStore(svc.store),
            default_ttl_s=60,
            max_ttl_s=600,
            idempotency_ttl_s=60,
        )
        busy, free = await _sessions(svc, 2)
        roots = [tracing.root(f"engine Feed {n}", None) for n in ("busy", "free")]
        parents = [r.context for r in roots if r is not None]
        got: dict[int, Any] = {}
        lock = svc.store.lock(busy)
        await lock.__aenter__()  # (another operation holds the session: feed 0 waits in line)
        run = asyncio.create_task(
            traced.feed_batch([_feed(busy, "a"), _feed(free, "b")], got.__setitem__, (), parents)
        )
        async with asyncio.timeout(10):
            while 1 not in got:
                await asyncio.sleep(0.005)
        await lock.__aexit__(None, None, None)
        await asyncio.wait_for(run, 10)
        assert got[0].version == 1 and got[1].version == 1
    finally:
        tracing.shutdown()
    spans = exporter.get_finished_spans()
    for parent in parents:
        mine = sorted(s.name for s in spans if s.parent is not None and s.parent == parent)
        assert mine == ["prefill batch", "queue wait", "store.commit", "store.get"], mine
    assert all(s.parent in parents for s in spans), [s.name for s in spans]
