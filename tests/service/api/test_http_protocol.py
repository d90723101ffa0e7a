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

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

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
