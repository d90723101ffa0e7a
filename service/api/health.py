"""Liveness and readiness."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from service.api import encode
from service.api.deps import Services, get_services
from service.errors import ServiceError
from service.protocol.client import EngineClient
from service.protocol.ops import Health, Load

router = APIRouter(tags=["health"])

HEALTH_TIMEOUT_S = 2.0  # a readiness probe's wait for the engine


class Ready(BaseModel):
    ready: bool = Field(
        description="True when a model serves (and, with `require_all_models`, none was refused)."
    )
    models: list[str] = Field(description="Models serving.")
    failed: dict[str, str] = Field(description="Artifact folder -> why it was refused.")
    problems: dict[str, str] = Field(
        default_factory=dict,
        description="What keeps the loaded engine from serving now -> why (a model's engine "
        "thread stalled, the engine process not answering); not ready while there is one.",
    )


@router.get("/healthz", summary="Liveness", responses={503: {"description": "The engine is gone"}})
async def healthz(s: Services = Depends(get_services)) -> JSONResponse:
    """Alive while this process and its engine are: an API worker whose engine process died
    answers 503 (the supervisor is stopping the server; a probe restarts what is left)."""
    if not s.client.alive:
        return JSONResponse({"status": "engine_gone"}, status_code=503)
    return JSONResponse({"status": "ok"})


class ModelLoad(BaseModel):
    queued: int = Field(description="Prefill jobs waiting for the model's engine thread.")
    streams: int = Field(description="Generations in its decode batch.")


class EngineLoad(BaseModel):
    models: dict[str, ModelLoad] = Field(description="Each model's queue and decode batch.")
    open_streams: int = Field(description="Stream slots held now, every worker's (decode rows).")
    max_open_streams: int = Field(description="`RNNSERVE_MAX_OPEN_STREAMS`.")


@router.get(
    "/v1/load",
    summary="The engine's load now (for a router or an autoscaler)",
    response_model=EngineLoad,
)
async def load(s: Services = Depends(get_services)) -> Response:
    return encode.response(await s.client.call(Load()))


@router.get("/readyz", summary="Readiness", response_model=Ready, responses={503: {"model": Ready}})
async def readyz(s: Services = Depends(get_services)) -> JSONResponse:
    cat = s.client.catalog
    problems = await engine_problems(s.client)
    ready = cat.ready(s.settings.require_all_models) and not problems
    body = Ready(ready=ready, models=sorted(cat.models), failed=cat.failed, problems=problems)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


async def engine_problems(client: EngineClient) -> dict[str, str]:
    """What keeps the engine from serving (what -> why), or why it does not say: a frozen or
    dead engine process answers nothing, and readiness must say so rather than wait with the
    probe (empty: it serves)."""
    try:
        return await asyncio.wait_for(client.call(Health()), HEALTH_TIMEOUT_S)
    except TimeoutError:
        return {"engine": f"the engine process did not answer within {HEALTH_TIMEOUT_S:g} s"}
    except ServiceError as e:  # the engine process is gone (503 engine_unavailable)
        return {"engine": e.message}
