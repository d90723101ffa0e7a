"""`WS /v1/sessions/{id}/ws`: the session operations over one WebSocket, same semantics as HTTP.

Client messages (JSON): `{"type": "feed", "text", ...}`, `{"type": "generate", "prompt"?, ...}`,
`{"type": "reset"}`; each may carry `id` (echoed back), `expected_version`, `idempotency_key`.
Server messages: `result` (feed/reset), `token` … `done` (generate), `error`. Messages are handled
one at a time in arrival order; a client error answers `error` and the socket stays open. If the
socket closes mid-request, that request is cancelled and commits nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, WebSocket, WebSocketDisconnect
from pydantic import Field, TypeAdapter, ValidationError

from service.api import encode
from service.api.bounds import IdempotencyKey
from service.api.deps import Services, get_owner, get_services, hold_of
from service.api.errors import field_of
from service.api.schemas import FeedRequest, ResetRequest, SessionGenerateRequest, _In, check_text
from service.api.streaming import token_payload
from service.errors import ServiceError, stream_error
from service.protocol.messages import Finished
from service.protocol.ops import Feed, GetSession, Reset, SessionGenerate

router = APIRouter(tags=["sessions"])


class _Msg(_In):
    id: str | int | None = Field(None, description="Echoed in every reply to this message.")
    idempotency_key: IdempotencyKey | None = Field(
        None, description="As the HTTP `Idempotency-Key` header."
    )


class WsFeed(FeedRequest, _Msg):
    type: Literal["feed"] = Field(description="The operation.")


class WsGenerate(SessionGenerateRequest, _Msg):
    type: Literal["generate"] = Field(description="The operation.")


class WsReset(ResetRequest, _Msg):
    type: Literal["reset"] = Field(description="The operation.")


Message = Annotated[WsFeed | WsGenerate | WsReset, Field(discriminator="type")]
_parse = TypeAdapter(Message)


async def _handle(
    ws: WebSocket, msg: WsFeed | WsGenerate | WsReset, s: Services, sid: str, owner: str | None
) -> None:
    tag: dict[str, Any] = {} if msg.id is None else {"id": msg.id}
    key = msg.idempotency_key
    if isinstance(msg, WsFeed):
        check_text(msg.text, "text", s.settings)
        fed = await s.client.call(Feed(sid, msg.text, msg.top_k, msg.expected_version, key, owner))
        await ws.send_json({"type": "result", "op": "feed", **tag, **encode.body(fed)})
    elif isinstance(msg, WsReset):
        r = await s.client.call(Reset(sid, msg.expected_version, key, owner))
        body = encode.body(r)
        await ws.send_json({"type": "result", "op": "reset", **tag, **body})
    else:
        params = msg.to_params(s.settings)
        op = SessionGenerate(sid, params, msg.expected_version, key, owner)
        gen = await s.client.open(op, hold_of(ws))
        try:
            async for ev in gen.events(keep_logprobs=False):  # each token message has its own
                if isinstance(ev, Finished):
                    await ws.send_json({"type": "done", **tag, **encode.body(ev.result)})
                else:
                    await ws.send_json({"type": "token", **tag, **token_payload(ev)})
        finally:
            await gen.aclose()


@router.websocket("/v1/sessions/{session_id}/ws")
async def session_ws(
    ws: WebSocket,
    session_id: str,
    s: Services = Depends(get_services),
    owner: str | None = Depends(get_owner),
) -> None:
    await ws.accept()
    try:
        await s.client.call(GetSession(session_id, owner))
    except ServiceError as e:
        await ws.send_json({"type": "error", **stream_error(e)})
        await ws.close(code=1008)
        return
    # Messages are read while an operation runs (to notice a close, which cancels it), so they
    # queue here: bounded in bytes, or a client sending without reading replies grows it
    # without end (1 MB feeds behind a long generate: +5 GB). Past the bound: close 1008.
    inbox: asyncio.Queue[str | None] = asyncio.Queue()
    queued = 0
    limit = s.settings.ws_max_queued_bytes

    async def read() -> None:
        nonlocal queued
        try:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    return
                text = msg.get("text")
                if text is None:  # a binary frame: JSON in UTF-8, or garbage that fails parsing
                    text = (msg.get("bytes") or b"").decode("utf-8", "replace")
                queued += len(text)
                if queued > limit:
                    await ws.close(
                        code=1008,
                        reason=f"over {limit} bytes of messages queued "
                        "(RNNSERVE_WS_MAX_QUEUED_BYTES): read the replies",
                    )
                    return
                inbox.put_nowait(text)
        except (WebSocketDisconnect, RuntimeError):
            return
        finally:
            inbox.put_nowait(None)

    reader = asyncio.create_task(read())
    try:
        while (raw := await inbox.get()) is not None:
            queued -= len(raw)
            try:
                msg = _parse.validate_json(raw)
            except ValidationError as e:
                err = e.errors()[0]
                loc = list(err["loc"])
                if loc and loc[0] in ("feed", "generate", "reset"):  # the union's tag
                    loc = loc[1:]
                field = field_of(loc) if loc else "message"
                bad = ServiceError(
                    f"{field}: {err['msg']}", status=422, code="invalid_input", field=field
                )
                await ws.send_json({"type": "error", **bad.body()})
                continue
            work = asyncio.create_task(_handle(ws, msg, s, session_id, owner))
            # a close while working cancels the work (nothing is committed)
            await asyncio.wait({work, reader}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await work
                break
            exc = work.exception()
            if exc is not None:
                if isinstance(exc, WebSocketDisconnect | RuntimeError):
                    break
                tag = {} if msg.id is None else {"id": msg.id}
                await ws.send_json({"type": "error", **tag, **stream_error(exc)})
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await ws.close()
