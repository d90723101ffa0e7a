"""`/v1/repository`: the model repository API, native (load, unload, index at run time; the engine's
side is `engine/repository.py`). The v2 surface serves the same operations where Triton's clients
call them (`api/v2/repository.py`); both are guarded by `require_admin`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from service.api.deps import Services, get_owner, get_services
from service.api.errors import responses
from service.contract.model_settings import parse_settings_object
from service.errors import ServiceError
from service.protocol.messages import RepositoryEntry
from service.protocol.ops import LoadModel, RepositoryIndex, UnloadModel


class Forbidden(ServiceError):
    status, code = 403, "forbidden"


async def require_admin(
    owner: str | None = Depends(get_owner), s: Services = Depends(get_services)
) -> None:
    """Loading and unloading change what every caller gets: with API keys on, only the key
    names in `RNNSERVE_ADMIN_KEYS` may (with keys off, whoever reaches the port may, as with
    every other route); `RNNSERVE_MODEL_CONTROL=false` turns the API off."""
    if not s.settings.model_control:
        raise Forbidden(
            "the model repository API is off (RNNSERVE_MODEL_CONTROL=false)",
            code="model_control_off",
        )
    admins = {n.strip() for n in s.settings.admin_keys.split(",") if n.strip()}
    if owner is not None and owner not in admins:
        raise Forbidden(
            f"the API key {owner!r} may not load or unload models (RNNSERVE_ADMIN_KEYS names "
            "the keys that may)"
        )


class Entry(BaseModel):
    name: str = Field(description="The model's name.")
    version: str = Field(description="The version (its folder's name, or its manifest's).")
    state: str = Field(
        description="READY, DRAINING (unloading: its sessions still served) or UNAVAILABLE."
    )
    reason: str = Field("", description="Why it is not READY.")
    default: bool = Field(False, description="The version a request naming only the model gets.")
    sessions: int | None = Field(None, description="A draining version's live sessions.")


class RepositoryIndexResponse(BaseModel):
    models: list[Entry] = Field(description="Each version, by name then version.")


class LoadRequest(BaseModel):
    version: str | None = Field(
        None, max_length=64, description="Load this version (default: those its policy names)."
    )
    settings: dict[str, Any] | None = Field(
        None,
        description="Settings over the model's settings.json for this load (same fields: "
        "max_batch_size, max_wait_ms, max_streams, variant, intra_op_threads, version_policy, "
        "default_version).",
    )


class UnloadRequest(BaseModel):
    version: str | None = Field(
        None, max_length=64, description="Unload this version (default: every version)."
    )
    drain_s: float | None = Field(
        None,
        ge=0,
        le=7 * 86400,
        description="Serve its live sessions for up to this long (default "
        "`RNNSERVE_UNLOAD_DRAIN_S`); then they end with 409 `model_unloaded`.",
    )


def entries(found: list[RepositoryEntry]) -> RepositoryIndexResponse:
    return RepositoryIndexResponse(
        models=[
            Entry(
                name=e.name,
                version=e.version,
                state=e.state,
                reason=e.reason,
                default=e.default,
                sessions=e.sessions,
            )
            for e in found
        ]
    )


router = APIRouter(
    prefix="/v1/repository", tags=["model repository"], dependencies=[Depends(require_admin)]
)


@router.get(
    "",
    response_model=RepositoryIndexResponse,
    responses=responses(403),
    summary="Every model version in the models folder, with its state",
)
async def index(
    ready: bool = Query(False, description="Only the versions serving (READY)."),
    s: Services = Depends(get_services),
) -> Any:
    return entries(await s.client.call(RepositoryIndex(ready)))


@router.post(
    "/models/{model}/load",
    response_model=RepositoryIndexResponse,
    responses=responses(400, 403, 404, 422),
    summary="Load a model, or a version of it, beside what serves",
)
async def load(
    model: str, body: LoadRequest | None = None, s: Services = Depends(get_services)
) -> Any:
    b = body or LoadRequest()
    if b.settings is not None:  # refused here, naming the field, before it crosses the wire
        parse_settings_object(b.settings, "settings")
    return entries(await s.client.call(LoadModel(model, b.version, b.settings)))


@router.post(
    "/models/{model}/unload",
    response_model=RepositoryIndexResponse,
    responses=responses(403, 404, 422),
    summary="Unload a model or a version, draining its sessions",
)
async def unload(
    model: str, body: UnloadRequest | None = None, s: Services = Depends(get_services)
) -> Any:
    b = body or UnloadRequest()
    return entries(await s.client.call(UnloadModel(model, b.version, b.drain_s)))
