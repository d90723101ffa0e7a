"""Server-sent events for generations. THE mapping of stream outcomes to SSE frames:

event: token   data: {"text", "index", "token_id", "logprob"?}     one per token
event: done    data: <GenerateResponse>                             finish_reason + usage
event: error   data: {"error": {...}}                               instead of `done`
data: [DONE]                                                        always last
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, Awaitable, Callable
from json.encoder import encode_basestring
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from service.api import encode
from service.api.pacing import Pacer
from service.errors import ServiceError, stream_error
from service.protocol.client import GenerationStream, TokenEvent
from service.protocol.messages import Finished

T = TypeVar("T")

# `responses=` entry for a route answering JSON or, with `stream`, server-sent events
STREAM_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON, or `text/event-stream` when `stream` is true",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


def token_payload(ev: TokenEvent) -> dict[str, Any]:
    out: dict[str, Any] = {"text": ev.text, "index": ev.index, "token_id": ev.token_id}
    if ev.logprob is not None:
        out["logprob"] = encode.body(ev.logprob)
    return out


def token_frame(ev: TokenEvent) -> str:
    """`_frame("token", token_payload(ev))`, byte for byte, without building a dict: one per
    token per stream, the hottest string in the server."""
    if ev.logprob is not None:
        return _frame("token", token_payload(ev))
    # what json.dumps(text, ensure_ascii=False) returns, minus building a JSONEncoder per call
    text = encode_basestring(ev.text)
    return f'event: token\ndata: {{"text": {text}, "index": {ev.index}, "token_id": {ev.token_id}}}\n\n'


def _frame(event: str | None, data: Any) -> str:
    head = f"event: {event}\n" if event else ""
    body = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"{head}data: {body}\n\n"


async def sse_events(gen: GenerationStream, pacer: Pacer) -> AsyncGenerator[str, None]:
    """The frames of a generation; all the tokens ready at a wake-up go out in one chunk, and
    under load `pacer` spaces the chunks (service/api/pacing.py)."""
    with pacer.stream():
        try:
            async for batch in gen.batches(keep_logprobs=False):  # each token has its own
                yield "".join(
                    _frame("done", encode.body(ev.result))
                    if isinstance(ev, Finished)
                    else token_frame(ev)
                    for ev in batch
                )
                if batch and not isinstance(batch[-1], Finished):  # the end is never paced
                    await pacer.after_write()
        except Exception as e:  # a cancellation (client gone) propagates: no frames after it
            yield _frame("error", stream_error(e))
        finally:
            await gen.aclose()
        yield _frame(None, "[DONE]")


class EventStream(StreamingResponse):
    """`text/event-stream` of `events` that always runs `close` (which frees what produces them:
    a generation, or every choice of a completion) whichever way the response ends (client
    disconnect detected by a failed send, cancellation, or normal end)."""

    media_type = "text/event-stream"

    def __init__(
        self, events: AsyncGenerator[str, None], close: Callable[[], Awaitable[None]]
    ) -> None:
        self._events = events
        self._close = close
        super().__init__(events, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._events.aclose()
            await self._close()


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run `work` but cancel it if the client disconnects first (so nothing is committed)."""
    task = asyncio.ensure_future(work)

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ServiceError("the client closed the request", status=499, code="client_closed")
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
