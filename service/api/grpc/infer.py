"""Inference over gRPC: one `ModelInferRequest` -> its responses.

The request is read into v2's `InferRequest` (`tensors.py`) and served by `v2/serving.py`, the
code HTTP's `/v2/models/{m}/infer` runs: stateless rows, or one step of a sequence (Triton's
`sequence_id` / `sequence_start` / `sequence_end`, the one session service's sequence step). So
a sequence fed over gRPC continues over HTTP and the reverse.

A generation (an rnnserve extension, as Triton's decoupled models answer): a request to a
language model that carries `max_tokens` (and optionally `temperature`, `top_k`, `top_p`,
`seed`, `stop`: the native generate request's fields, with its limits) and the prompt as its
`TEXT` input. Over `ModelStreamInfer` each token is one response (outputs `TEXT`, the text it
releases, and `TOKEN_IDS`), and a last response with no outputs carries
`triton_final_response: true` with `finish_reason`, `prompt_tokens`, `completion_tokens` and
`seed`; over `ModelInfer`, one response holds the whole text.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import numpy as np
from pydantic import ValidationError

from service.api.deps import Services
from service.api.grpc import inference_pb2 as pb
from service.api.grpc import tensors
from service.api.schemas import GenerateRequest
from service.api.v2 import protocol, serving
from service.api.v2.protocol import TEXT, TOKEN_IDS
from service.errors import InvalidInput
from service.protocol.catalog import ModelView
from service.protocol.events import TokenEvent
from service.protocol.messages import Finished, GenerationResult
from service.protocol.ops import Generate

# request parameters of a generation (the native generate request's fields)
GENERATION = frozenset(("max_tokens", "temperature", "top_k", "top_p", "seed", "stop"))
# Triton's decoupled-model flag that tritonclient's streams send: the last response is always
# an empty one marked final here, so it is accepted and needs nothing
_STREAM_FLAGS = frozenset(("triton_enable_empty_final_response",))
_OWN = GENERATION | _STREAM_FLAGS


def is_generation(msg: pb.ModelInferRequest) -> bool:
    return "max_tokens" in msg.parameters


async def infer(s: Services, msg: pb.ModelInferRequest, owner: str | None) -> pb.ModelInferResponse:
    """A stateless request or a sequence step: its one response."""
    req, rest = tensors.request(msg, skip=_STREAM_FLAGS)
    version = msg.model_version or None
    answer = await serving.infer(s, msg.model_name, version, req, rest, owner)
    produced = serving.outputs(answer.model, answer.logits)
    return tensors.response(
        answer.model.name,
        answer.model.manifest.version,
        msg.id,
        [(name, *produced[name]) for name, _ in answer.wanted],
    )


async def open_generation(
    s: Services, msg: pb.ModelInferRequest, owner: str | None
) -> tuple[ModelView, Generate]:
    """The generation a request asks for, checked (`GenerateRequest`'s rules and limits)."""
    req, rest = tensors.request(msg, skip=_OWN)
    params = req.parameters or {}
    protocol.check_parameters(params)
    if protocol.parse_sequence(params) is not None:
        raise InvalidInput(
            "a generation cannot be a sequence step; generate from a session with the native "
            "API (POST /v1/sessions/{id}/generate)",
            field="parameters.sequence_id",
        )
    m = serving.model_of(s, msg.model_name, msg.model_version or None)
    if m.manifest.task != "next_token":
        raise InvalidInput(
            f"model {m.name!r} is a classifier; max_tokens asks for a generation",
            field="parameters.max_tokens",
        )
    rows = serving.read_rows(m, req, rest, s)
    if rows.texts is None or len(rows) != 1:
        raise InvalidInput(f"a generation takes one {TEXT!r} row: its prompt", field=TEXT)
    gen = {k: tensors.parameter(v, k) for k, v in msg.parameters.items() if k in GENERATION}
    try:
        body = GenerateRequest.model_validate({"prompt": rows.texts[0], **gen})
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "parameters"
        raise InvalidInput(f"{first['msg']}", field=f"parameters.{where}") from None
    return m, Generate(m.key, body.to_params(s.settings))


def _token(m: ModelView, rid: str, ev: TokenEvent) -> pb.ModelInferResponse:
    text = np.empty(1, dtype=object)
    text[0] = ev.text.encode()
    return tensors.response(
        m.name,
        m.manifest.version,
        rid,
        [(TEXT, "BYTES", text), (TOKEN_IDS, "INT64", np.array([ev.token_id], dtype=np.int64))],
    )


def _summary(r: GenerationResult) -> dict[str, Any]:
    out: dict[str, Any] = {
        "finish_reason": r.finish_reason,
        "prompt_tokens": r.usage.prompt_tokens,
        "completion_tokens": r.usage.completion_tokens,
        "seed": r.seed,
    }
    if r.stop is not None:
        out["stop"] = r.stop
    return out


async def generate(
    s: Services, msg: pb.ModelInferRequest, owner: str | None
) -> pb.ModelInferResponse:
    """A generation answered at once: the whole text."""
    m, op = await open_generation(s, msg, owner)
    hold = s.client.hold_stream(owner)
    try:
        gen = await s.client.open(op, hold)
        try:
            result = await gen.collect()
        finally:
            await gen.aclose()
    finally:
        hold.release()
    text = np.empty(1, dtype=object)
    text[0] = result.text.encode()
    return tensors.response(
        m.name, m.manifest.version, msg.id, [(TEXT, "BYTES", text)], _summary(result)
    )


async def stream_generation(
    s: Services, msg: pb.ModelInferRequest, owner: str | None
) -> AsyncGenerator[pb.ModelInferResponse, None]:
    """A generation token by token, then its final (empty) response."""
    m, op = await open_generation(s, msg, owner)
    hold = s.client.hold_stream(owner)
    try:
        gen = await s.client.open(op, hold)
        try:
            async for batch in gen.batches(keep_logprobs=False):
                for item in batch:
                    if isinstance(item, Finished):
                        params = {"triton_final_response": True, **_summary(item.result)}
                        yield tensors.response(m.name, m.manifest.version, msg.id, [], params)
                    else:
                        yield _token(m, msg.id, item)
        finally:
            await gen.aclose()
    finally:
        hold.release()
