"""uvicorn's h11 protocol with two guards its options do not offer.

* A header deadline: a connection must deliver a request's headers within `header_timeout_s`
  of connecting (or of the first byte of a later request on a kept-alive connection), or it is
  closed. uvicorn times out idle kept-alive connections but waits forever for a header that
  arrives a byte at a time (800 such sockets stayed open 31 s, until the client gave up).
* An abort for the app: `scope["extensions"]["rnnserve.abort"]` drops the connection at once.
  A dropped stream (client stalled) must free its socket, and `transport.close()` waits to flush
  what the client never reads, so the socket stayed open until the client closed it.
* A flush deadline: a response that is complete but still unsent after `flush_timeout_s` (the
  client stopped reading: a stream that ended `client_too_slow`, say) aborts the connection.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from service.logging import get_logger

log = get_logger("http")
ABORT = "rnnserve.abort"


class GuardedH11Protocol(H11Protocol):
    header_timeout_s = 10.0  # both set by `protocol_for`
    flush_timeout_s = 10.0

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._header_timer: asyncio.TimerHandle | None = None
        self._flush_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._flush_timer is None and self.transport.get_write_buffer_size() > 0:
            self._flush_timer = self.loop.call_later(self.flush_timeout_s, self._flush_timeout)

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
        super().data_received(data)

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        cycle = self.cycle
        if cycle is not None and cycle is not before:  # a request's headers are in
            self._disarm()
            extensions: dict[str, Any] = cycle.scope.setdefault("extensions", {})
            extensions[ABORT] = self.transport.abort

    def handle_websocket_upgrade(self, event: Any) -> None:
        self._disarm()  # the WebSocket protocol owns the connection from here
        super().handle_websocket_upgrade(event)

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

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


def protocol_for(header_timeout_s: float, flush_timeout_s: float) -> type[GuardedH11Protocol]:
    """The protocol class for uvicorn's `http=`, with this server's deadlines."""
    deadlines = {"header_timeout_s": header_timeout_s, "flush_timeout_s": flush_timeout_s}
    return type("GuardedH11", (GuardedH11Protocol,), deadlines)
