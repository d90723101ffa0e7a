"""`/v1/models`: list, describe, predict, stateless generate."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from starlette.responses import Response

from service.api import encode
from service.api.deps import Services, get_hold, get_services
from service.api.errors import responses
from service.api.schemas import (
    GenerateRequest,
    GenerateResponse,
    ModelInfo,
    ModelList,
    PredictRequest,
    PredictResponse,
)
from service.api.streaming import STREAM_RESPONSE, EventStream, sse_events
from service.protocol.catalog import ModelView, newest
from service.protocol.client import StreamHold
from service.protocol.ops import Generate, Predict

router = APIRouter(prefix="/v1/models", tags=["models"])


def model_info(m: ModelView, detail: bool = False, versions: list[str] | None = None) -> ModelInfo:
    man = m.manifest
    return ModelInfo(
        name=man.name,
        version=man.version,
        task=man.task,
        cell=man.cell,
        num_layers=man.num_layers,
        hidden_size=man.hidden_size,
        labels=man.labels,
        vocab_size=m.tokenizer.vocab_size,
        tokenizer=man.tokenizer.kind,
        sha256=m.sha256,
        variant=m.variant or "fp32",
        provider=m.provider,
        state_bytes=man.state_nbytes_per_row(),
        sampling=man.sampling.model_dump() if man.task == "next_token" else None,
        training=man.training.model_dump() if detail else None,
        settings=m.settings,
        versions=versions or [man.version],
    )


def _versions(s: Services, m: ModelView) -> list[str]:
    return newest([v.manifest.version for v in s.client.catalog.versions_of(m.name)])


@router.get("", response_model=ModelList, summary="Models being served")
async def list_models(s: Services = Depends(get_services)) -> ModelList:
    cat = s.client.catalog
    return ModelList(models=[model_info(m, versions=_versions(s, m)) for m in cat.models.values()])


@router.get("/{model}", response_model=ModelInfo, responses=responses(404))
async def get_model(model: str, s: Services = Depends(get_services)) -> ModelInfo:
    m = s.client.catalog.get(model)
    return model_info(m, detail=True, versions=_versions(s, m))


@router.post(
    "/{model}/predict",
    response_model=PredictResponse,
    response_model_exclude_none=True,
    responses=responses(404, 422, 503),
    summary="Classify texts, or list next-token probabilities",
)
async def predict(
    model: str, body: PredictRequest, s: Services = Depends(get_services)
) -> Response:
    return await predict_response(s, model, body)


async def predict_response(s: Services, model: str, body: PredictRequest) -> Response:
    """The predict route's work, also run by `direct.py` for a request it takes past the
    router. The JSON is the typed outputs encoded (`results.py`), not re-validated against the
    response model."""
    body.check(s.settings)
    # tokenized here, in the API: the engine only runs the model
    m = s.client.catalog.get(model)
    rows = [m.encode_full(t, f"inputs[{i}]") for i, t in enumerate(body.inputs)]
    # the very version tokenized for, whatever becomes the default meanwhile
    outputs = await s.client.call(Predict(m.key, rows, body.top_k))
    return encode.response({"model": model, "outputs": outputs})


@router.post(
    "/{model}/generate",
    response_model=GenerateResponse,
    response_model_exclude_none=True,
    responses={**STREAM_RESPONSE, **responses(400, 404, 422, 503)},
    summary="Generate text from a fresh state (JSON or SSE)",
)
async def generate(
    model: str,
    body: GenerateRequest,
    s: Services = Depends(get_services),
    hold: StreamHold | None = Depends(get_hold),
) -> Response | dict[str, Any]:
    if body.stream:
        return await stream_response(s, model, body, hold)
    gen = await s.client.open(Generate(model, body.to_params(s.settings)), hold)
    try:
        return encode.response(await gen.collect())
    finally:
        await gen.aclose()


async def stream_response(
    s: Services, model: str, body: GenerateRequest, hold: StreamHold | None
) -> EventStream:
    """The generate route's work for `"stream": true`, also run by `direct.py` for a request
    it takes past the router."""
    gen = await s.client.open(Generate(model, body.to_params(s.settings)), hold)
    return EventStream(sse_events(gen, s.pacer), gen.aclose)
