"""Which of uvicorn's HTTP parsers carries the guards (tests/hardening/test_stream_bounds.py
drives both over real sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from service.api.http_protocol import HttpImpl, protocol_for
from service.settings import Settings


def test_auto_picks_httptools_with_the_deadlines() -> None:
    cls = protocol_for(3.0, 4.0)
    assert issubclass(cls, HttpToolsProtocol)
    assert (cls.header_timeout_s, cls.flush_timeout_s) == (3.0, 4.0)  # type: ignore[attr-defined]


def test_h11_on_request() -> None:
    cls = protocol_for(1.0, 2.0, "h11")
    assert issubclass(cls, H11Protocol) and not issubclass(cls, HttpToolsProtocol)


def test_the_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RNNSERVE_HTTP", "h11")
    assert Settings().http == "h11"
    monkeypatch.setenv("RNNSERVE_HTTP", "nghttp2")
    with pytest.raises(ValueError, match="http"):
        Settings()


class _Transport(asyncio.Transport):
    """The seam under the protocol: what it writes is kept, and the test says how many bytes
    the kernel has not taken yet (`buffered`)."""

    def __init__(self) -> None:
        super().__init__()
        self.buffered = 0
        self.aborted = False
        self.closed = False
        self.writes: list[bytes] = []  # each write, as the kernel would get it (one send each)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def sends(self) -> list[bytes]:
        """The writes a socket would send (asyncio's and uvloop's transports make no system
        call for an empty one, which h11 writes to end a response with a length)."""
        return [w for w in self.writes if w]

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )


async def _until(check: Callable[[], bool]) -> None:
    for _ in range(10_000):  # (loop turns, not time: the app's task runs between them)
        if check():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


@pytest.mark.parametrize("impl", ["httptools", "h11"])
async def test_a_flush_deadline_ends_with_the_next_request(impl: HttpImpl) -> None:
    """A response complete with bytes unsent arms the flush deadline; the client then read it
    and asked for a stream, which it reads as it comes (bytes always in flight). The old
    deadline must not abort that stream when it fires; the stream's own end arms a new one."""
    started, release = asyncio.Event(), asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if scope["path"] == "/stream":
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
            started.set()
            await release.wait()
        await send({"type": "http.response.body", "body": b"ok"})

    flush = 0.05
    cls = protocol_for(10.0, flush, impl)
    config = uvicorn.Config(app, lifespan="off", log_config=None, http=cls)
    config.load()
    proto: Any = cls(config=config, server_state=ServerState(), app_state={})  # type: ignore[call-arg]
    t = _Transport()
    proto.connection_made(t)
    t.buffered = 100  # the client is not reading yet
    proto.data_received(b"GET /done HTTP/1.1\r\nHost: x\r\n\r\n")
    await _until(lambda: proto.cycle is not None and proto.cycle.response_complete)
    t.buffered = 0  # it read the response, and asks for a stream
    proto.data_received(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    await started.wait()
    t.buffered = 100  # the stream's bytes in flight
    await asyncio.sleep(4 * flush)  # (timers fire in deadline order: the old one first)
    assert not t.aborted
    release.set()
    await _until(lambda: proto.cycle.response_complete)
    # the stream's end unsent: its own deadline holds (a condition waited on, 5 s at most)
    await asyncio.wait_for(_aborted(t), 5)


async def _aborted(t: _Transport) -> None:
    while not t.aborted:
        await asyncio.sleep(0.01)


def _protocol(app: Any, impl: HttpImpl) -> tuple[Any, _Transport]:
    cls = protocol_for(10.0, 10.0, impl)
    config = uvicorn.Config(app, lifespan="off", log_config=None, http=cls)
    config.load()
    proto: Any = cls(config=config, server_state=ServerState(), app_state={})  # type: ignore[call-arg]
    t = _Transport()
    proto.connection_made(t)
    return proto, t


@pytest.mark.parametrize("impl", ["httptools", "h11"])
async def test_a_response_goes_out_in_one_write_and_a_streams_head_without_its_first_event(
    impl: HttpImpl,
) -> None:
    """A plain response: its head and its body in one write (one send, where uvicorn made
    two). A stream whose first event is not ready: its head goes out anyway as this loop
    iteration ends (the client sees the 200 before the first event), then each event on its own.
    Two requests on one connection, each held apart."""
    first_event = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/stream":  # (chunked, as an SSE response)
            headers = [(b"content-type", b"text/event-stream")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await first_event.wait()
            await send({"type": "http.response.body", "body": b"data: 1", "more_body": True})
        else:
            headers = [(b"content-type", b"text/plain"), (b"content-length", b"3")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"end"})

    proto, t = _protocol(app, impl)
    proto.data_received(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
    await _until(lambda: proto.cycle is not None and proto.cycle.response_complete)
    assert len(sends := t.sends()) == 1, sends
    assert sends[0].startswith(b"HTTP/1.1 200 ") and sends[0].endswith(b"\r\n\r\nend")

    proto.data_received(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    await _until(lambda: len(t.sends()) == 2)  # the head, alone, while the event is not ready
    head = t.sends()[1]
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n"), head
    first_event.set()
    await _until(lambda: proto.cycle.response_complete)
    sends = t.sends()
    assert b"data: 1" in sends[2] and b"end" in sends[3], sends


@pytest.mark.parametrize("impl", ["httptools", "h11"])
async def test_a_held_head_is_sent_before_the_connection_closes(impl: HttpImpl) -> None:
    """An app that fails after starting its response: uvicorn closes the connection, and the
    head it had written goes out before the close, as it did when it was written at once."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("the app failed mid-response")

    proto, t = _protocol(app, impl)
    proto.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await _until(lambda: t.closed)
    assert len(sends := t.sends()) == 1 and sends[0].startswith(b"HTTP/1.1 200 "), sends
