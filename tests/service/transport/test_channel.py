"""`Channel`: both ends of the wire read from the loop's reader callback and write one message
per peer per loop iteration."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from service.transport import channel, wire
from service.transport.channel import DRAIN, Channel
from tests.service.transport.conftest import until


@contextlib.contextmanager
def pair(tmp_path: Path) -> Iterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]]:
    """A bound ROUTER (an engine's) and a DEALER connected to it as b"w1" (a worker's)."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    for s in (router, dealer):
        s.setsockopt(zmq.LINGER, 0)
    router.bind(f"ipc://{tmp_path}/c.sock")
    dealer.setsockopt(zmq.IDENTITY, b"w1")
    dealer.connect(f"ipc://{tmp_path}/c.sock")
    try:
        yield router, dealer
    finally:
        router.close()
        dealer.close()
        ctx.term()


async def test_what_one_loop_iteration_posts_leaves_as_one_message_in_order(
    tmp_path: Path,
) -> None:
    messages: list[tuple[bytes | None, bytes]] = []
    with pair(tmp_path) as (router, dealer):
        engine = Channel(router, lambda peer, raw: messages.append((peer, raw)))
        worker_got: list[bytes] = []
        worker = Channel(dealer, lambda _peer, raw: worker_got.append(raw))
        engine.start()
        worker.start()
        try:
            for rid in (1, 2, 3):  # one iteration: one message of three frames
                worker.post(None, wire.Cancel(rid))
            await until(lambda: len(messages) == 1)
            peer, raw = messages[0]
            assert peer == b"w1"
            assert wire.incoming_decoder.decode(raw) == [
                wire.Cancel(1),
                wire.Cancel(2),
                wire.Cancel(3),
            ]
            engine.post(b"w1", wire.Cancel(7))
            engine.post(b"w1", wire.Cancel(8))
            await until(lambda: len(worker_got) == 1)
            assert wire.frames_decoder.decode(worker_got[0]) == [wire.Cancel(7), wire.Cancel(8)]
        finally:
            engine.stop()
            worker.stop()


async def test_frames_wait_for_the_end_of_the_iteration_at_most_the_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A frame that has waited past `HOLD_S` leaves with the ones posted since, at once: the
    engine starts on a worker's first calls while the worker still reads the rest."""
    monkeypatch.setattr(channel, "HOLD_S", -1.0)  # (every frame has waited past it)
    messages: list[object] = []
    with pair(tmp_path) as (router, dealer):
        engine = Channel(
            router, lambda _peer, raw: messages.append(wire.incoming_decoder.decode(raw))
        )
        worker = Channel(dealer, lambda _peer, _raw: None)
        engine.start()
        worker.start()
        try:
            for rid in (1, 2, 3):  # 1 and 2 leave as 2 is posted; 3 at the iteration's end
                worker.post(None, wire.Cancel(rid))
            await until(lambda: len(messages) == 2)
            assert messages == [[wire.Cancel(1), wire.Cancel(2)], [wire.Cancel(3)]]
        finally:
            engine.stop()
            worker.stop()


async def test_a_frame_sent_alone_is_a_single_frame_any_wire_version_reads(tmp_path: Path) -> None:
    with pair(tmp_path) as (router, dealer):
        worker = Channel(dealer, lambda _peer, _raw: None)
        worker.start()
        try:
            worker.send_alone(wire.Call(1, wire.Hello(wire.WIRE_VERSION)))
            assert await asyncio.to_thread(router.poll, 5000)
            _, raw = router.recv_multipart()
            assert wire.decoder.decode(raw) == wire.Call(1, wire.Hello(wire.WIRE_VERSION))
        finally:
            worker.stop()


async def test_every_queued_message_is_read_past_the_drain_bound_and_past_a_failing_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The descriptor is edge-triggered: messages queued before the reader starts, more than one
    drain reads, are all read, and a handler that raises on one does not strand the rest."""
    got: list[int] = []

    def on_message(_peer: bytes | None, raw: bytes) -> None:
        (frame,) = wire.frames_decoder.decode(raw)
        assert isinstance(frame, wire.Cancel)
        if frame.rid == 5:
            raise RuntimeError("a bug")
        got.append(frame.rid)

    n = 2 * DRAIN + 10
    with pair(tmp_path) as (router, dealer):
        dealer.send(b"hi")  # (a ROUTER drops what it sends to a peer it has not heard from)
        assert await asyncio.to_thread(router.poll, 5000)
        router.recv_multipart()
        for rid in range(n):
            router.send_multipart([b"w1", wire.encoder.encode([wire.Cancel(rid)])])
        worker = Channel(dealer, on_message)
        await until(lambda: bool(dealer.getsockopt(zmq.EVENTS) & zmq.POLLIN))
        worker.start()
        try:
            await until(lambda: len(got) == n - 1)
        finally:
            worker.stop()
    assert got == [r for r in range(n) if r != 5]
    assert "a message could not be handled" in caplog.text


async def test_after_stop_nothing_is_read_or_sent(tmp_path: Path) -> None:
    got: list[bytes] = []
    with pair(tmp_path) as (router, dealer):
        worker = Channel(dealer, lambda _peer, raw: got.append(raw))
        worker.start()
        worker.stop()
        worker.post(None, wire.Cancel(1))  # dropped, quietly
        dealer.send(b"hi")
        assert await asyncio.to_thread(router.poll, 5000)
        router.recv_multipart()
        router.send_multipart([b"w1", wire.encoder.encode([wire.Cancel(2)])])
        await asyncio.sleep(0.05)  # (nothing to wait for: nothing may arrive)
        assert got == []
        assert not await asyncio.to_thread(router.poll, 50)
