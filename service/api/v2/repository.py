"""The v2 model repository extension, where Triton's clients call it: `POST /v2/repository/index`,
`POST /v2/repository/models/{name}/load` and `.../unload` (`tritonclient`'s
`get_model_repository_index`, `load_model` and `unload_model`, unmodified). The same operations
as `/v1/repository` (`api/repository.py`), with the same admin guard.

Parameters, as Triton's: `load` takes `config` (a JSON string: here the model's settings.json
fields, over its file), and `version` (a version to load, an rnnserve extension); `unload` takes
`unload_dependents` (accepted; rnnserve models have none), and `version` and `drain_s`."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from service.api.deps import Services, get_services
from service.api.repository import require_admin
from service.api.v2.protocol import ErrorResponse
from service.api.v2.router import _ERRORS, V2Route
from service.contract.model_settings import parse_settings_object
from service.errors import InvalidInput
from service.protocol.ops import LoadModel, RepositoryIndex, UnloadModel

_REPO_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    403: {"model": ErrorResponse, "description": "Not an admin key, or model control off"},
}

router = APIRouter(
    prefix="/v2/repository",
    tags=["v2 (KServe / Triton)"],
    route_class=V2Route,
    dependencies=[Depends(require_admin)],
)


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidInput(f"the body is not JSON: {e}", field="body") from None
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object", field="body")
    return body


def _params(params: Any, known: set[str]) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise InvalidInput("must be an object", field="parameters")
    for name in params:
        if name not in known:  # e.g. Triton's `file:<path>` graph uploads
            raise InvalidInput(
                f"not supported (rnnserve takes {', '.join(sorted(known))}; a model's files "
                "come from the models folder)",
                field=f"parameters.{name}",
            )
    return params


def _str(params: dict[str, Any], name: str) -> str | None:
    v = params.get(name)
    if v is not None and (not isinstance(v, str) or not 0 < len(v) <= 64):
        raise InvalidInput("must be a string of 1-64 characters", field=f"parameters.{name}")
    return v


@router.post("/index", summary="Model repository index", responses=_REPO_ERRORS)
async def index(request: Request, s: Services = Depends(get_services)) -> Response:
    ready = (await _body(request)).get("ready", False)
    if not isinstance(ready, bool):
        raise InvalidInput("must be true or false", field="ready")
    found = await s.client.call(RepositoryIndex(ready))
    return JSONResponse(
        [
            {"name": e.name, "version": e.version, "state": e.state, "reason": e.reason}
            for e in found
        ]
    )


def load_op(model: str, params: dict[str, Any]) -> LoadModel:
    """A load's parameters (HTTP's or gRPC's), checked, as the operation."""
    params = _params(params, {"config", "version"})
    settings = None
    config = params.get("config")
    if config is not None:
        try:
            settings = json.loads(config) if isinstance(config, str) else None
        except json.JSONDecodeError as e:
            raise InvalidInput(f"not JSON: {e}", field="parameters.config") from None
        if not isinstance(settings, dict):
            raise InvalidInput(
                "must be a JSON object in a string (the model's settings.json fields)",
                field="parameters.config",
            )
        parse_settings_object(settings, "parameters.config")
    return LoadModel(model, _str(params, "version"), settings)


def unload_op(model: str, params: dict[str, Any]) -> UnloadModel:
    """An unload's parameters (HTTP's or gRPC's), checked, as the operation."""
    params = _params(params, {"unload_dependents", "version", "drain_s"})
    drain = params.get("drain_s")
    if drain is not None and (
        isinstance(drain, bool) or not isinstance(drain, int | float) or not 0 <= drain <= 604800
    ):
        raise InvalidInput("must be a number of seconds, 0-604800", field="parameters.drain_s")
    return UnloadModel(model, _str(params, "version"), drain)


@router.post("/models/{model}/load", summary="Load a model", responses=_REPO_ERRORS)
async def load(model: str, request: Request, s: Services = Depends(get_services)) -> Response:
    await s.client.call(load_op(model, (await _body(request)).get("parameters", {})))
    return JSONResponse({})


@router.post("/models/{model}/unload", summary="Unload a model", responses=_REPO_ERRORS)
async def unload(model: str, request: Request, s: Services = Depends(get_services)) -> Response:
    await s.client.call(unload_op(model, (await _body(request)).get("parameters", {})))
    return JSONResponse({})
