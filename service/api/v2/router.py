"""`/v2/...`: the Open Inference Protocol v2 (KServe v2 REST, as Triton implements it).

Errors here have the protocol's shape, `{"error": "message"}`: client mistakes are 400 (the
native 422 included), unknown models or versions 404, overload 503.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.responses import Response

from service.api.deps import Services, get_owner, get_services
from service.api.surface_route import SurfaceRoute
from service.api.surfaces import v2_error
from service.api.v2 import binary, protocol, serving
from service.api.v2.protocol import ErrorResponse, ModelMetadata, ModelReady, ServerMetadata
from service.errors import ServiceError
from service.protocol.catalog import ModelView


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class V2Route(SurfaceRoute):
    """Maps every failure of a v2 route to `{"error": "message"}`."""

    surface = "v2"

    def on_service_error(self, e: ServiceError) -> Response:
        status, body = v2_error(e)
        return JSONResponse(body, status_code=status, headers=e.headers)

    def on_validation_error(self, e: RequestValidationError) -> Response:
        first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(400, f"{where}: {first.get('msg')}")

    def on_http_error(self, e: HTTPException) -> Response:
        return error_response(e.status_code, str(e.detail))


router = APIRouter(prefix="/v2", tags=["v2 (KServe / Triton)"], route_class=V2Route)
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Malformed request, tensor or sequence"},
    404: {"model": ErrorResponse, "description": "Unknown model or version"},
    503: {"model": ErrorResponse, "description": "Not ready, queue full or shutting down"},
}


@router.get("", response_model=ServerMetadata, summary="Server metadata")
async def server_metadata() -> ServerMetadata:
    return protocol.server_metadata()


@router.get("/health/live", summary="Liveness", responses=_ERRORS)
async def live(s: Services = Depends(get_services)) -> Response:
    if not s.client.alive:  # as /healthz: the engine process died
        return error_response(503, "not live: the engine process is gone")
    return JSONResponse({"live": True})


@router.get("/health/ready", summary="Readiness", responses=_ERRORS)
async def ready(s: Services = Depends(get_services)) -> Response:
    why = await serving.server_not_ready(s)
    if why is None:
        return JSONResponse({"ready": True})
    return error_response(503, "not ready: " + why)


@router.get(
    "/models/{model}",
    response_model=ModelMetadata,
    responses=_ERRORS,
    summary="Model metadata: input and output tensors",
)
async def model_metadata(model: str, s: Services = Depends(get_services)) -> ModelMetadata:
    return protocol.metadata_of(serving.model_of(s, model, None), s.client.catalog)


@router.get(
    "/models/{model}/versions/{version}",
    response_model=ModelMetadata,
    responses=_ERRORS,
    summary="Model metadata (a given version)",
)
async def model_version_metadata(
    model: str, version: str, s: Services = Depends(get_services)
) -> ModelMetadata:
    return protocol.metadata_of(serving.model_of(s, model, version), s.client.catalog)


@router.get("/models/{model}/config", responses=_ERRORS, summary="Model configuration")
async def model_config(model: str, s: Services = Depends(get_services)) -> dict[str, Any]:
    return protocol.config_of(serving.model_of(s, model, None))


@router.get(
    "/models/{model}/versions/{version}/config",
    responses=_ERRORS,
    summary="Model configuration (a given version)",
)
async def model_version_config(
    model: str, version: str, s: Services = Depends(get_services)
) -> dict[str, Any]:
    return protocol.config_of(serving.model_of(s, model, version))


@router.get(
    "/models/{model}/ready", response_model=ModelReady, responses=_ERRORS, summary="Model readiness"
)
async def model_ready(model: str, s: Services = Depends(get_services)) -> Response:
    return await _ready(s, serving.model_of(s, model, None))


@router.get(
    "/models/{model}/versions/{version}/ready",
    response_model=ModelReady,
    responses=_ERRORS,
    summary="Model readiness (a given version)",
)
async def model_version_ready(
    model: str, version: str, s: Services = Depends(get_services)
) -> Response:
    return await _ready(s, serving.model_of(s, model, version))


async def _ready(s: Services, m: ModelView) -> Response:
    """Ready while its engine thread moves: 503 naming why (`serving.not_ready`)."""
    why = await serving.not_ready(s, m)
    if why is not None:
        return error_response(503, why)
    return JSONResponse(ModelReady(name=m.name, ready=True).model_dump())


_INFER_DOC: dict[str, Any] = {
    "requestBody": {
        "description": "A v2 inference request (JSON), optionally followed by binary tensor data "
        f"(then `{binary.HEADER_LENGTH}` gives the JSON's length).",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


async def _infer(
    model: str, version: str | None, request: Request, s: Services, owner: str | None
) -> Response:
    body = binary.decompress(
        await request.body(), request.headers.get("content-encoding"), s.settings.max_body_bytes
    )
    header, rest = binary.split_body(body, request.headers.get(binary.HEADER_LENGTH))
    req = protocol.parse_request(header)
    answer = await serving.infer(s, model, version, req, rest, owner)
    content, header_length = serving.respond(answer, req)
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content,
        media_type="application/octet-stream",
        headers={binary.HEADER_LENGTH: str(header_length)},
    )


@router.post(
    "/models/{model}/infer",
    response_model=protocol.InferResponse,
    responses=_ERRORS,
    openapi_extra=_INFER_DOC,
    summary="Inference (stateless, or one step of a sequence)",
)
async def infer(
    model: str,
    request: Request,
    s: Services = Depends(get_services),
    owner: str | None = Depends(get_owner),
) -> Response:
    return await _infer(model, None, request, s, owner)


@router.post(
    "/models/{model}/versions/{version}/infer",
    response_model=protocol.InferResponse,
    responses=_ERRORS,
    openapi_extra=_INFER_DOC,
    summary="Inference (a given version)",
)
async def infer_version(
    model: str,
    version: str,
    request: Request,
    s: Services = Depends(get_services),
    owner: str | None = Depends(get_owner),
) -> Response:
    return await _infer(model, version, request, s, owner)
