"""Drive the ASGI app by hand: a client whose sends can be held (a stalled reader)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message


class HeldClient:
    """One HTTP request; `hold_after` response messages are taken (or those before the first
    that `hold_at` picks), then sends block until `release` is set (like a socket whose reader
    stopped reading)."""

    def __init__(
        self, hold_after: int | None = None, hold_at: Callable[[Message], bool] | None = None
    ) -> None:
        self.messages: list[Message] = []
        self.hold_after = hold_after
        self.hold_at = hold_at  # or hold at the first message this is true of
        self.release = asyncio.Event()
        self.held = asyncio.Event()
        self.gone = asyncio.Event()  # set to make receive() report a disconnect

    async def call(
        self, app: ASGIApp, method: str, path: str, body: Any, headers: dict[str, str] | None = None
    ) -> None:
        raw = json.dumps(body).encode()
        hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
        hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": hdrs,
            "client": ("127.0.0.1", 5555),
            "server": ("test", 80),
            "state": {},
        }
        sent_body = False

        async def receive() -> Message:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": raw, "more_body": False}
            await self.gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if (self.hold_after is not None and len(self.messages) >= self.hold_after) or (
                self.hold_at is not None and self.hold_at(message)
            ):
                self.held.set()
                await self.release.wait()
            self.messages.append(message)

        await app(scope, receive, send)

    @property
    def status(self) -> int | None:
        for m in self.messages:
            if m["type"] == "http.response.start":
                return int(m["status"])
        return None

    @property
    def body(self) -> bytes:
        return b"".join(
            m.get("body", b"") for m in self.messages if m["type"] == "http.response.body"
        )


class HeldWebSocket:
    """One WebSocket connection driven by hand: `inbox` feeds client messages; after
    `hold_after` server messages, sends block until `release` (a reader that stopped reading,
    or a half-open connection whose socket buffer is full)."""

    def __init__(self, hold_after: int) -> None:
        self.hold_after = hold_after
        self.sent: list[Message] = []
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.inbox.put_nowait({"type": "websocket.connect"})
        self.release = asyncio.Event()
        self.held = asyncio.Event()

    async def call(self, app: ASGIApp, path: str, headers: dict[str, str] | None = None) -> None:
        scope = {
            "type": "websocket",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "scheme": "ws",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
            "client": ("127.0.0.1", 5556),
            "server": ("test", 80),
            "subprotocols": [],
            "state": {},
        }

        async def receive() -> Message:
            return await self.inbox.get()

        async def send(message: Message) -> None:
            if message["type"] == "websocket.send" and len(self.sent) >= self.hold_after:
                self.held.set()
                await self.release.wait()
            self.sent.append(message)

        await app(scope, receive, send)

    def send_json(self, obj: Any) -> None:
        self.inbox.put_nowait({"type": "websocket.receive", "text": json.dumps(obj)})
