"""`run_app`: one process's HTTP server, uvicorn with our protocol, logging and graceful shutdown."""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import Iterator
from typing import Any

import uvicorn

from service.api.http_protocol import protocol_for
from service.logging import get_logger
from service.settings import Settings


class _Server(uvicorn.Server):
    """uvicorn's server, logging the address it really listens on once bound (with port 0 the
    system picks the port; uvicorn's own start-up lines are not logged: `log_config=None`). An
    API worker, given the supervisor's socket, says nothing: the supervisor logs it once."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                # a drained shutdown is a clean exit (0), as at --workers N; uvicorn would
                # raise the signal again on the way out, and `make serve` then said
                # "make: *** [Makefile:36: serve] Terminated"
                self._captured_signals.clear()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # what else the app serves (its gRPC endpoint) drains beside HTTP, in the same time
        for hook in getattr(getattr(self.config.app, "state", None), "drain_hooks", ()):
            hook()
        await super().shutdown(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if sockets is not None:
            return
        for server in self.servers:
            for sock in server.sockets:
                url = url_of(sock)
                get_logger("server").info("listening on %s", url, extra={"url": url})


def run_app(app: Any, settings: Settings, sockets: list[socket.socket] | None = None) -> None:
    """uvicorn with our protocol, logging and graceful shutdown (on `sockets` when given: an
    API worker shares the supervisor's listening socket)."""
    # the engine threads need the GIL back quickly after each onnxruntime call: with the
    # default 5 ms, a busy event loop could hold it for a whole decode step
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # our JSON logging (service.logging) is configured by create_app
        access_log=False,  # the app logs one line per request itself, with its request id
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s) or None,
        # longer than the clients' and balancers' own idle timeouts (settings.py says why)
        timeout_keep_alive=settings.keep_alive_timeout_s,
        lifespan="on",
        # httptools (or h11) with deadlines for a request's headers and a response's last
        # bytes, and an abort
        http=protocol_for(settings.header_timeout_s, settings.send_timeout_s, settings.http),
    )
    _Server(config).run(sockets=sockets)


def url_of(sock: socket.socket) -> str:
    """The URL a bound socket answers on (its real port, also when asked for port 0)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
