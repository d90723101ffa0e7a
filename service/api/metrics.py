"""Prometheus exposition."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.api.deps import Services, get_services
from service.metrics import exposition
from service.protocol.ops import LiveSessions

router = APIRouter(tags=["health"])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(s: Services = Depends(get_services)) -> Response:
    live = await s.client.call(LiveSessions())
    s.metrics.live_sessions.set(live)
    return Response(exposition(s.metrics.registry), media_type=CONTENT_TYPE_LATEST)
