"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from service.api.deps import Services, get_services

router = APIRouter(tags=["health"])


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


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness", response_model=Ready, responses={503: {"model": Ready}})
async def readyz(s: Services = Depends(get_services)) -> JSONResponse:
    cat = s.client.catalog
    problems = await s.client.health()
    ready = cat.ready(s.settings.require_all_models) and not problems
    body = Ready(ready=ready, models=sorted(cat.models), failed=cat.failed, problems=problems)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
