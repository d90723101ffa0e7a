"""`/v1/sessions`: stateful sessions (DESIGN §4) over HTTP."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from starlette.responses import Response

from service.api import encode
from service.api.bounds import IdempotencyKey
from service.api.deps import Services, get_hold, get_owner, get_services
from service.api.errors import responses
from service.api.schemas import (
    CreateSession,
    FeedRequest,
    FeedResponse,
    GenerateResponse,
    ResetRequest,
    SessionGenerateRequest,
    SessionInfo,
    StateResponse,
    check_text,
)
from service.api.streaming import (
    STREAM_RESPONSE,
    EventStream,
    sse_events,
    unless_disconnected,
)
from service.errors import InvalidState
from service.protocol.client import StreamHold
from service.protocol.ops import (
    CreateSession as Create,
)
from service.protocol.ops import (
    DeleteSession,
    ExportState,
    Feed,
    GetSession,
    Reset,
    SessionGenerate,
)

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])

IdemKey = Annotated[
    IdempotencyKey | None,
    Header(
        alias="Idempotency-Key",
        description="Retry-safe key: a repeat returns the stored result without advancing state.",
    ),
]


@router.post(
    "",
    status_code=201,
    response_model=SessionInfo,
    response_model_exclude_none=True,
    responses=responses(404, 409, 422, 429),
    summary="Create a session (optionally from an exported state)",
)
async def create_session(
    body: CreateSession, s: Services = Depends(get_services), owner: str | None = Depends(get_owner)
) -> Response:
    blob = None
    if body.state is not None:
        try:
            blob = base64.b64decode(body.state, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidState("state is not valid base64", field="state") from None
    info = await s.client.call(Create(body.model, body.session_id, body.ttl_s, blob, owner))
    return encode.response(info, status=201)


@router.get(
    "/{session_id}",
    response_model=SessionInfo,
    response_model_exclude_none=True,
    responses=responses(404),
)
async def get_session(
    session_id: str, s: Services = Depends(get_services), owner: str | None = Depends(get_owner)
) -> Response:
    return encode.response(await s.client.call(GetSession(session_id, owner)))


@router.delete("/{session_id}", status_code=204, response_class=Response, responses=responses(404))
async def delete_session(
    session_id: str, s: Services = Depends(get_services), owner: str | None = Depends(get_owner)
) -> Response:
    await s.client.call(DeleteSession(session_id, owner))
    return Response(status_code=204)


@router.post(
    "/{session_id}/reset",
    response_model=SessionInfo,
    response_model_exclude_none=True,
    responses=responses(404, 409, 422),
    summary="Zero the state, keep the id",
)
async def reset_session(
    session_id: str,
    body: ResetRequest | None = None,
    idempotency_key: IdemKey = None,
    s: Services = Depends(get_services),
    owner: str | None = Depends(get_owner),
) -> Response:
    expected = body.expected_version if body is not None else None
    r = await s.client.call(Reset(session_id, expected, idempotency_key, owner))
    return encode.response(r, replayed=r.replayed)


@router.post(
    "/{session_id}/feed",
    response_model=FeedResponse,
    responses=responses(404, 409, 422, 503),
    summary="Feed the next chunk of text; returns the running output",
)
async def feed(
    session_id: str,
    body: FeedRequest,
    idempotency_key: IdemKey = None,
    s: Services = Depends(get_services),
    owner: str | None = Depends(get_owner),
) -> Response:
    return await feed_response(s, session_id, body, idempotency_key, owner)


async def feed_response(
    s: Services, session_id: str, body: FeedRequest, idempotency_key: str | None, owner: str | None
) -> Response:
    """The feed route's work, also run by `direct.py` for a request it takes past the router."""
    check_text(body.text, "text", s.settings)
    r = await s.client.call(
        Feed(session_id, body.text, body.top_k, body.expected_version, idempotency_key, owner)
    )
    return encode.response(r, replayed=r.replayed)


@router.post(
    "/{session_id}/generate",
    response_model=GenerateResponse,
    responses={**STREAM_RESPONSE, **responses(400, 404, 409, 422, 503)},
    summary="Generate from the session's state and commit the result to it",
)
async def generate(
    request: Request,
    session_id: str,
    body: SessionGenerateRequest,
    idempotency_key: IdemKey = None,
    s: Services = Depends(get_services),
    owner: str | None = Depends(get_owner),
    hold: StreamHold | None = Depends(get_hold),
) -> Response:
    params = body.to_params(s.settings)
    op = SessionGenerate(session_id, params, body.expected_version, idempotency_key, owner)
    gen = await s.client.open(op, hold)
    if body.stream:
        return EventStream(sse_events(gen, s.pacer), gen.aclose)
    try:
        r = await unless_disconnected(request, gen.collect())
    finally:
        await gen.aclose()
    return encode.response(r, replayed=r.replayed)


@router.get(
    "/{session_id}/state",
    response_model=StateResponse,
    responses=responses(404),
    summary="Export the state as an opaque, checksummed blob",
)
async def export_state(
    session_id: str, s: Services = Depends(get_services), owner: str | None = Depends(get_owner)
) -> Response:
    return encode.response(await s.client.call(ExportState(session_id, owner)))
