"""The engine process's end of the wire: it serves any operation without naming it, skips what
it cannot decode, sends a step's tokens as arrays, and forgets a dead worker's calls and stream slots."""

from __future__ import annotations

import asyncio
import gc
import os
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio

from service.protocol.messages import FeedResult
from service.protocol.ops import CreateSession, Feed, GetSession
from service.transport import wire
from service.transport.host import EngineHost
from service.transport.remote import worker_identity
from tests.service.conftest import LM, ClientFactory, app_of
from tests.service.transport.conftest import Wired, hosted, sent_frames, until


async def test_a_dead_workers_slots_are_freed_by_forget_worker(
    make_client: ClientFactory,
) -> None:
    async with make_client(max_open_streams=4) as c:
        local = app_of(c).state.local
        async with hosted(local) as (host, worker):
            for _ in range(3):
                await worker.hold_stream("o").confirmed()
            assert local.slots.open == 3
            # the supervisor's word that the worker died (SIGKILL: it could not release)
            assert host.forget_worker(worker_identity(os.getpid())) == 3
            await until(lambda: local.slots.open == 0)


async def test_a_frame_it_cannot_decode_is_skipped_and_serving_goes_on(
    wired: Wired,
) -> None:
    local = wired.local
    host = wired.host
    worker = wired.worker
    ctx = zmq.asyncio.Context()
    stranger = ctx.socket(zmq.DEALER)
    stranger.setsockopt(zmq.LINGER, 0)
    stranger.connect(host.address)
    try:
        await stranger.send(b"\xc1 not msgpack")
        info = await worker.call(CreateSession(LM, "h1", None, None, None))
        fed = await worker.call(Feed(info.session_id, "to be", 3, None, None, None))
        assert fed.version == 1
        assert (await local.call(GetSession("h1", None))).version == 1
    finally:
        stranger.close(linger=0)
        ctx.term()


async def test_frames_sent_as_the_socket_closes_are_reported_not_lost_in_a_future(
    make_client: ClientFactory, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """A decode step's tokens posted while the engine shuts down: the failed send is logged,
    not raised into the loop, and leaves nothing unretrieved behind it."""
    async with make_client() as c:
        host = EngineHost(app_of(c).state.local, f"ipc://{tmp_path}/engine.sock")
        host._channel.sock.close(linger=0)
        unretrieved: list[object] = []
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: unretrieved.append(ctx))
        try:
            host._channel._send(b"gone", wire.encoder.encode([wire.Cancel(1)]))
            await asyncio.sleep(0)  # (a callback on a pending send runs here)
            gc.collect()
        finally:
            loop.set_exception_handler(None)
        host._ctx.term()
    assert unretrieved == []
    assert "frames not sent" in caplog.text


async def test_feeds_read_together_run_as_one_batch_each_answered_on_its_own(
    wired: Wired, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Feeds from one worker read in one go are one batch (`SessionService.feed_batch`): each
    answered under its own rid, in order on one session, errors its own; a Cancel read after
    them marks only its feed gone (not answered, not committed)."""
    host, local = wired.host, wired.local
    for sid in ("b1", "b2"):
        await local.call(CreateSession(LM, sid, None, None, None))
    sizes: list[int] = []
    real = local.sessions.feed_batch

    async def spy(ops: Any, reply: Any, gone: Any) -> None:
        sizes.append(len(ops))
        await real(ops, reply, gone)

    monkeypatch.setitem(local._batchers, Feed, spy)
    sent = sent_frames(host, monkeypatch)
    calls = [("b1", "ab"), ("b2", "x"), ("b1", "cd"), ("nope", "z")]
    # one message of four calls (as a worker sends what one loop iteration made), then the
    # Cancel alone (it starts the batch, then cancels)
    feeds = [
        wire.Call(rid, Feed(sid, text, 3, None, None, None))
        for rid, (sid, text) in enumerate(calls, 1)
    ]
    host._read(b"w", wire.encoder.encode(feeds))
    host._read(b"w", wire.encoder.encode(wire.Cancel(2)))
    await until(lambda: len(sent) == 3)
    assert sizes == [4]
    by_rid = {f.rid: f for f in sent if isinstance(f, wire.Result | wire.Failed)}
    assert set(by_rid) == {1, 3, 4}
    first, second, missing = by_rid[1], by_rid[3], by_rid[4]
    assert isinstance(first, wire.Result) and isinstance(second, wire.Result)
    assert wire.decode_result(FeedResult, first.value).version == 1
    assert wire.decode_result(FeedResult, second.value).version == 2
    assert isinstance(missing, wire.Failed) and missing.error.code == "session_not_found"
    assert (await local.call(GetSession("b2", None))).version == 0  # its caller went
    assert host._members == {} and host._batches == {}


async def test_a_lone_feed_runs_as_any_call_not_as_a_batch(
    wired: Wired, monkeypatch: pytest.MonkeyPatch
) -> None:
    host, local = wired.host, wired.local
    await local.call(CreateSession(LM, "l1", None, None, None))
    sizes: list[int] = []

    async def spy(ops: Any, reply: Any, gone: Any) -> None:  # pragma: no cover (must not run)
        sizes.append(len(ops))

    monkeypatch.setitem(local._batchers, Feed, spy)
    sent = sent_frames(host, monkeypatch)
    host._read(b"w", wire.encoder.encode(wire.Call(1, Feed("l1", "a", 3, None, None, None))))
    host._start_batches()  # (the end of a drain)
    await until(lambda: len(sent) == 1)
    assert sizes == [] and isinstance(sent[0], wire.Result)
