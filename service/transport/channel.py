"""One end of the wire on an event loop: a plain ZeroMQ socket, read from the loop's reader
callback on its descriptor and written once per loop iteration per peer. Both ends use it: the
engine's ROUTER (`host.py`, a peer is a worker's identity) and each worker's DEALER
(`remote.py`, one peer: the engine).

Why not pyzmq's asyncio socket: it makes a future for every message each way (~14 % of the
engine's Python per session step, py-spy), and why one message per peer per loop iteration:
every send and every receive gives up the GIL, so a message per frame made a GIL hand-off (and
a wake-up of ZeroMQ's I/O thread) per token step and per call (docs/benchmarks.md). Whatever a
peer is sent while the loop runs the callbacks and tasks that are ready goes out as ONE msgpack
array when they are done (`call_soon` runs after them), or as soon as its first frame has waited
`HOLD_S`: a worker's loop iteration that reads 32 HTTP requests lasts milliseconds, and holding
every call to its end made the engine wait for the last one before starting on the first (a
lockstep of the two processes: at one worker with the shipped model, 0.73x the session steps a
300 us bound gives, docs/benchmarks.md).

ZeroMQ's descriptor is edge-triggered and only says "look at ZMQ_EVENTS": every queued message
must be read before it signals again, and a send may consume the edge of a message that arrived
meanwhile, which is why a flush looks again (`_recheck`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import zmq

from service.logging import get_logger
from service.transport import wire

log = get_logger("transport")

DRAIN = 256  # messages read in one go before the loop runs anything else
HOLD_S = 300e-6  # the longest a frame waits for the ones after it (see above)

# pyzmq's flags and options as plain ints: its enums cost an enum operation wherever they are
# combined or tested, and `send_multipart` / `recv_multipart` do that for every part (a routed
# message's send 2.2 -> 0.8 us as two sends, its receive 2.3 -> 0.5 us as two receives, the
# `_recheck` 4.1 -> 2.2 us; each runs for nearly every message at a session step's rates)
_NOBLOCK = int(zmq.NOBLOCK)
_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)

# (peer, payload): the peer is the sender's identity on a ROUTER, None on a DEALER
Receive = Callable[[bytes | None, bytes], None]


class Channel:
    """`post(peer, frame)` queues a frame (a `wire` struct, or `msgspec.Raw` already encoded)
    for the end of this loop iteration; `on_message(peer, payload)` gets each message read, and
    `after_drain()` runs once a drain has read what was queued."""

    def __init__(
        self,
        sock: zmq.Socket[bytes],
        on_message: Receive,
        after_drain: Callable[[], None] = lambda: None,
    ) -> None:
        self.sock = sock
        self._routed = sock.type == zmq.ROUTER  # messages carry the peer's identity
        self._on_message = on_message
        self._after_drain = after_drain
        self._outbox: dict[bytes | None, list[Any]] = {}
        self._first: dict[bytes | None, float] = {}  # when each peer's oldest frame was posted
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd: int | None = None
        self._flush_due = False
        self._recheck_due = False
        self.closing = False

    def start(self) -> None:
        """Read from now on (in the running loop), and whatever is queued already."""
        self._loop = asyncio.get_running_loop()
        self._fd = int(self.sock.getsockopt(zmq.FD))
        self._loop.add_reader(self._fd, self._readable)
        self._readable()

    def stop(self) -> None:
        """Stop reading and sending (what is still in the outbox is dropped)."""
        self.closing = True
        if self._loop is not None and self._fd is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        self._fd = None
        self._outbox.clear()
        self._first.clear()

    def post(self, peer: bytes | None, frame: Any) -> None:
        box = self._outbox.get(peer)
        if box is None:
            self._outbox[peer] = [frame]
            self._first[peer] = time.perf_counter()
        else:
            box.append(frame)
            if time.perf_counter() - self._first[peer] > HOLD_S:  # the rest of them go now
                del self._outbox[peer]
                self._send(peer, wire.encoder.encode(box))
                self._recheck()
                return
        if not self._flush_due and self._loop is not None:
            self._flush_due = True
            # call_soon runs after the tasks already ready in this loop iteration, i.e. after
            # every stream woken by the same engine step has posted its frame
            self._loop.call_soon(self._flush)

    def send_alone(self, frame: Any) -> None:
        """One frame as a message of its own, now (a worker's `Hello`: an engine of another
        wire version must still read it, to answer with its version)."""
        self._send(None, wire.encoder.encode(frame))

    def _flush(self) -> None:
        self._flush_due = False
        out, self._outbox = self._outbox, {}
        self._first.clear()
        for peer, frames in out.items():
            self._send(peer, wire.encoder.encode(frames))
        self._recheck()  # (a send may have taken the edge of a message that came meanwhile)

    def _send(self, peer: bytes | None, payload: bytes) -> None:
        if self.closing:
            return
        try:
            # no high-water mark on either end: a send never waits, so NOBLOCK never refuses
            if peer is None:
                self.sock.send(payload, _NOBLOCK)
            else:  # a routed message: [peer, payload]
                self.sock.send(peer, _MORE)
                self.sock.send(payload, _NOBLOCK)
        except zmq.ZMQError as e:  # the socket is closing
            log.warning("frames not sent", extra={"error": str(e)})

    def _readable(self) -> None:
        """Read what is queued, up to a bound (then the rest in the next loop iteration)."""
        self._recheck_due = False
        if self.closing:
            return
        sock, on_message = self.sock, self._on_message
        try:
            for _ in range(DRAIN):
                try:
                    if self._routed:  # [peer, payload]; ZeroMQ delivers a message's parts
                        # together, so once the first is read the second is there
                        peer = sock.recv(_NOBLOCK)
                        payload = sock.recv(_NOBLOCK)
                    else:
                        peer, payload = None, sock.recv(_NOBLOCK)
                except zmq.ZMQError:  # zmq.Again: nothing more queued (or the socket closing)
                    return
                try:
                    on_message(peer, payload)
                except Exception:  # (a bug) the rest must still be read: the edge is spent
                    log.exception("a message could not be handled")
            self._recheck()  # the bound was reached: the rest after the loop runs what is ready
        finally:
            self._after_drain()

    def _recheck(self) -> None:
        if self._recheck_due or self.closing or self._loop is None:
            return
        with contextlib.suppress(zmq.ZMQError):
            if int(self.sock.getsockopt(_EVENTS)) & _POLLIN:
                self._recheck_due = True
                self._loop.call_soon(self._readable)
