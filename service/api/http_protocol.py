"""uvicorn's HTTP protocols (httptools, the default when installed, or h11) with guards its
options do not offer.

* A header deadline: a connection must deliver a request's headers within `header_timeout_s`
  of connecting (or of the first byte of a later request on a kept-alive connection), or it is
  closed. uvicorn times out idle kept-alive connections but waits forever for a header that
  arrives a byte at a time (800 such sockets stayed open 31 s, until the client gave up).
* An abort for the app: `scope["extensions"]["rnnserve.abort"]` drops the connection at once.
  A dropped stream (client stalled) must free its socket, and `transport.close()` waits to flush
  what the client never reads, so the socket stayed open until the client closed it.
* A flush deadline: a response that is complete but still unsent after `flush_timeout_s` (the
  client stopped reading: a stream that ended `client_too_slow`, say) aborts the connection;
  the client's next request (or a WebSocket upgrade) ends the deadline.
* A response's head and body in one send: uvicorn writes the status line and headers as the
  app starts the response, then the body, two sends (two system calls, and over loopback two
  wake-ups of the client) for every plain response. The head is held (`_HeadWithBody`) until
  the body's first write, or the end of this loop iteration when none comes in it (a stream
  whose first event is not ready yet).

The guards are one mixin over both of uvicorn's parsers. httptools (C, llhttp) is the default:
the session step spends most of its server CPU in HTTP handling, and the pure-Python h11 parser
costs more per request (docs/benchmarks.md); `RNNSERVE_HTTP=h11` keeps h11 available.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Literal

from uvicorn.protocols.http.h11_impl import H11Protocol

from service.logging import get_logger

log = get_logger("http")
ABORT = "rnnserve.abort"


class _HeadWithBody:
    """A request cycle's view of the connection's transport: the response's first write (its
    head) held and sent with the next (the body), or at the end of this loop iteration when no
    other write comes in it. Every write after the first goes through at once, so the buffer
    that the flush deadline reads holds a complete response's bytes when it completes."""

    __slots__ = ("_flush", "_head", "_loop", "transport", "write")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self._head: bytes | None = None
        self._flush: asyncio.Handle | None = None
        # (the instance's own, switched after the first write: no flag tested at every write)
        self.write: Callable[[bytes], None] = self._first

    def _first(self, data: bytes) -> None:
        self.write = self._now
        self._head = data
        self._flush = self._loop.call_soon(self._send_head)

    def _now(self, data: bytes) -> None:
        if self._head is not None and self._flush is not None:  # the body: with the head
            self._flush.cancel()
            data, self._head, self._flush = self._head + data, None, None
        self.transport.write(data)

    def _send_head(self) -> None:
        head, self._head, self._flush = self._head, None, None
        if head is not None and not self.transport.is_closing():
            self.transport.write(head)

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        if self._head is not None:
            self._send_head()
        self.transport.close()


class _Guards:
    """The deadlines and the abort, for a uvicorn HTTP protocol class (mixed in first)."""

    header_timeout_s = 10.0  # both set by `protocol_for`
    flush_timeout_s = 10.0
    # provided by the uvicorn protocol this is mixed into
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any

    _header_timer: asyncio.TimerHandle | None = None
    _flush_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._unflush()
        super().connection_lost(exc)  # type: ignore[misc]

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._unflush()  # (each response its own deadline)
        if self.transport.get_write_buffer_size() > 0:
            self._flush_timer = self.loop.call_later(self.flush_timeout_s, self._flush_timeout)

    def _unflush(self) -> None:
        """No flush deadline: the client asked for more (it read the response, or pipelines,
        and then a send that waits on it is bounded by the send timeout), or the connection is
        another protocol's. A deadline left armed would abort the connection if that later
        response had bytes in the buffer at the moment it fired."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None

    def _flush_timeout(self) -> None:
        self._flush_timer = None
        # closing or not (the keep-alive timeout closes, and a close waits for the flush)
        if self.transport.get_write_buffer_size() > 0:
            log.info(
                "response not taken in time; connection aborted",
                extra={"timeout_s": self.flush_timeout_s},
            )
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self._between_requests():
            self._arm()  # the first byte of a new request on a kept-alive connection
        super().data_received(data)  # type: ignore[misc]

    def _headers_in(self) -> None:
        """A request's headers are in: the header deadline is met, the app gets the abort, and
        the request's cycle writes its response's head with its body."""
        self._disarm()
        self._unflush()
        self.cycle.transport = _HeadWithBody(self.transport, self.loop)
        extensions: dict[str, Any] = self.cycle.scope.setdefault("extensions", {})
        extensions[ABORT] = self.transport.abort

    def _between_requests(self) -> bool:
        return self.cycle is None or bool(self.cycle.response_complete)

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self._between_requests() and not self.transport.is_closing():
            log.info(
                "request headers not received in time; connection closed",
                extra={"timeout_s": self.header_timeout_s},
            )
            self.transport.abort()


class GuardedH11Protocol(_Guards, H11Protocol):
    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        if self.cycle is not None and self.cycle is not before:
            self._headers_in()

    def handle_websocket_upgrade(self, event: Any) -> None:
        self._disarm()  # the WebSocket protocol owns the connection from here
        self._unflush()
        super().handle_websocket_upgrade(event)


def _httptools_class() -> type[asyncio.Protocol] | None:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools not installed (uvicorn without [standard])
        return None

    class GuardedHttpToolsProtocol(_Guards, HttpToolsProtocol):
        def on_headers_complete(self) -> None:
            before = self.cycle
            super().on_headers_complete()
            if self.cycle is not None and self.cycle is not before:  # not an upgrade
                self._headers_in()

        def handle_websocket_upgrade(self) -> None:
            self._disarm()  # the WebSocket protocol owns the connection from here
            self._unflush()
            super().handle_websocket_upgrade()

    return GuardedHttpToolsProtocol


HttpImpl = Literal["auto", "httptools", "h11"]


def protocol_for(
    header_timeout_s: float, flush_timeout_s: float, impl: HttpImpl = "auto"
) -> type[asyncio.Protocol]:
    """The protocol class for uvicorn's `http=`, with this server's deadlines: httptools when
    installed (`auto`), else h11."""
    tools = _httptools_class() if impl != "h11" else None
    if tools is None and impl == "httptools":
        raise RuntimeError("RNNSERVE_HTTP=httptools but httptools is not installed")
    base = tools or GuardedH11Protocol
    deadlines = {"header_timeout_s": header_timeout_s, "flush_timeout_s": flush_timeout_s}
    return type(base.__name__, (base,), deadlines)
