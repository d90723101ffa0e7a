"""The native surface's JSON: the engine's typed results (`service/protocol/messages.py`) encoded
as they are, for the REST routes, the SSE `done` event and the WebSocket. Their shapes are
described once more only for OpenAPI (`schemas.py`), and `tests/service/api/test_encode.py`
keeps the two agreeing."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.responses import Response

from service.protocol.messages import Message

_encode = msgspec.json.Encoder().encode


def body(result: Message) -> dict[str, Any]:
    """A result as JSON-ready data (bytes as base64), to merge into a frame or a message."""
    out: dict[str, Any] = msgspec.to_builtins(result)
    return out


def response(result: Any, *, replayed: bool | None = None, status: int = 200) -> Response:
    """A result (or data holding results) as the response body; an `Idempotency-Key` replay says so in a header too."""
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    return Response(_encode(result), status, headers, media_type="application/json")
