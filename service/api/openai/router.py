"""OpenAI-compatible surface for the language models: `/openai/v1/{models,completions}`.

`/v1/completions` is also served (it does not clash with the native API); `/v1/models` is the
native list, so an OpenAI client's `base_url` should be `http://host:port/openai/v1`.
Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.responses import Response

from service.api.bounds import IdempotencyKey
from service.api.deps import Services, get_hold, get_owner, get_services
from service.api.errors import http_error
from service.api.openai import serving
from service.api.openai.protocol import (
    Completion,
    CompletionRequest,
    ErrorResponse,
    ModelCard,
    ModelCardList,
    error_body,
)
from service.api.streaming import STREAM_RESPONSE, EventStream
from service.api.surface_route import SurfaceRoute, client_status
from service.errors import ModelNotFound, ServiceError
from service.protocol.catalog import ModelView
from service.protocol.client import StreamHold


def error_response(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(message, status, param, code), status, headers=headers)


class OpenAIRoute(SurfaceRoute):
    """Maps every failure of an OpenAI route to OpenAI's error shape (client mistakes: 400)."""

    surface = "openai"

    def on_service_error(self, e: ServiceError) -> Response:
        return error_response(client_status(e), e.message, e.field, e.code, e.headers)

    def on_validation_error(self, e: RequestValidationError) -> Response:
        errors = list(e.errors())
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = loc[0] if loc else None
        if first.get("type") == "extra_forbidden":
            msg = f"unsupported parameter {param!r}"
        elif first.get("type") == "json_invalid":
            msg, param = f"body is not valid JSON: {first.get('msg')}", None
        else:
            msg = f"{'.'.join(loc) or 'body'}: {first.get('msg')}"
        return error_response(400, msg, param, "invalid_request")

    def on_http_error(self, e: HTTPException) -> Response:
        err = http_error(e)
        return error_response(err.status, err.message, err.field, err.code, err.headers)


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid or unsupported parameter"},
    404: {"model": ErrorResponse, "description": "Unknown model or session"},
    409: {"model": ErrorResponse, "description": "Session version conflict"},
    503: {"model": ErrorResponse, "description": "Overloaded or shutting down (Retry-After)"},
}


def _card(m: ModelView) -> ModelCard:
    return ModelCard(id=m.name, created=m.created)


def _language_model(s: Services, name: str) -> ModelView:
    m = s.client.catalog.get(name)
    if m.manifest.task != "next_token":
        raise ModelNotFound(
            f"model {name!r} is a {m.manifest.task} model; the completions API serves language "
            "models",
            field="model",
        )
    return m


async def list_models(s: Services = Depends(get_services)) -> ModelCardList:
    return ModelCardList(data=[_card(m) for m in s.client.catalog.language_models()])


async def retrieve_model(model: str, s: Services = Depends(get_services)) -> ModelCard:
    return _card(_language_model(s, model))


async def create_completion(
    body: CompletionRequest,
    idempotency_key: Annotated[
        IdempotencyKey | None,
        Header(
            alias="Idempotency-Key",
            description="With `session_id`: a retry returns the stored result, state advances "
            "once.",
        ),
    ] = None,
    s: Services = Depends(get_services),
    owner: str | None = Depends(get_owner),
    hold: StreamHold | None = Depends(get_hold),
) -> Response | dict[str, Any]:
    req = body.validate_for(s.settings)
    _language_model(s, req.model)
    completion = await serving.start(s, req, owner, idempotency_key, hold)
    if req.stream:
        return EventStream(serving.sse(completion, s.pacer), completion.aclose)
    return await serving.collect(completion)


async def chat_completions() -> Response:
    return error_response(
        404,
        "chat completions are not served: these are character-level language models trained on "
        "plain text, with no chat template or roles; use /completions with a text prompt",
        None,
        "unsupported_endpoint",
    )


def _router(prefix: str, with_models: bool) -> APIRouter:
    r = APIRouter(prefix=prefix, tags=["OpenAI-compatible"], route_class=OpenAIRoute)
    if with_models:
        r.add_api_route(
            "/models",
            list_models,
            methods=["GET"],
            response_model=ModelCardList,
            summary="Language models (OpenAI model list)",
        )
        r.add_api_route(
            "/models/{model}",
            retrieve_model,
            methods=["GET"],
            response_model=ModelCard,
            responses=_ERRORS,
            summary="One language model",
        )
    r.add_api_route(
        "/completions",
        create_completion,
        methods=["POST"],
        response_model=Completion,
        response_model_exclude_none=True,
        responses={**STREAM_RESPONSE, **_ERRORS},
        summary="Text completion (JSON or SSE)",
    )
    r.add_api_route(
        "/chat/completions",
        chat_completions,
        methods=["POST"],
        responses={404: _ERRORS[404]},
        summary="Not served (see docs/protocols.md)",
    )
    return r


router = _router("/openai/v1", with_models=True)
compat_router = _router("/v1", with_models=False)  # /v1/models is the native list
