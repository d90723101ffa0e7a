"""Request/response models shared by the native REST and WebSocket surfaces."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.api.bounds import Items, StrictIn
from service.errors import InvalidInput
from service.protocol.messages import GenerateParams
from service.settings import Settings


class _In(StrictIn):
    """A native request body or WebSocket message (see `service/api/bounds.py`)."""


def check_text(text: str | None, field: str, settings: Settings) -> None:
    if text is not None and len(text) > settings.max_text_chars:
        raise InvalidInput(
            f"{field} is {len(text)} characters; the limit is {settings.max_text_chars}",
            field=field,
        )


# -- outputs ---------------------------------------------------------------------------------


class NextToken(BaseModel):
    token: str = Field(description="A candidate next token (a character for char models).")
    prob: float = Field(description="Its probability.")


class Output(BaseModel):
    """Classifier: `label` + `probs`; language model: `next` (most likely next tokens)."""

    kind: Literal["classify", "next_token"] = Field(
        description="`classify` (a classifier's) or `next_token` (a language model's)."
    )
    label: str | None = Field(None, description="Most likely label (classifiers).")
    probs: dict[str, float] | None = Field(None, description="Probability per label.")
    next: list[NextToken] | None = Field(None, description="Top next tokens (language models).")


# -- models ----------------------------------------------------------------------------------


class ModelInfo(BaseModel):
    name: str = Field(description="Model name used in URLs.")
    version: str = Field(description="Artifact version.")
    task: str = Field(description="`classify` or `next_token`.")
    cell: str = Field(description="Recurrent cell.")
    num_layers: int = Field(description="Stacked layers.")
    hidden_size: int = Field(description="Hidden units per layer.")
    labels: list[str] | None = Field(None, description="Classifier labels.")
    vocab_size: int = Field(description="Tokenizer vocabulary size.")
    tokenizer: str = Field(description="`char` or `word`.")
    sha256: str = Field(description="sha256 of the ONNX graph being served.")
    variant: str = Field(
        description="Graph in use: `fp32` (the base graph) or a manifest variant, e.g. `int8` "
        "(see `RNNSERVE_VARIANT`)."
    )
    provider: str = Field(description="onnxruntime execution provider in use.")
    state_bytes: int = Field(description="Bytes of recurrent state per session.")
    sampling: dict[str, Any] | None = Field(
        description="Generation defaults from the manifest (language models; null for a "
        "classifier, which generates nothing)."
    )
    training: dict[str, Any] | None = Field(None, description="Training summary (detail view).")
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="Its settings in force: its settings.json over the server's (batch size, "
        "batch wait, stream cap, variant, threads, version policy, default version).",
    )
    versions: list[str] = Field(
        default_factory=list,
        description="Every version serving; `version` is the default one (request another as "
        "`name@version`).",
    )


class ModelList(BaseModel):
    models: list[ModelInfo] = Field(description="Every model being served.")


class PredictRequest(_In):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"inputs": ["a gripping, beautiful film", "dull and far too long"]}]
        }
    )

    inputs: Items[str] = Field(min_length=1, description="Texts to classify or continue.")
    top_k: int = Field(5, ge=1, le=1000, description="Next tokens listed (language models).")

    def check(self, settings: Settings) -> None:
        if len(self.inputs) > settings.max_inputs:
            raise InvalidInput(f"at most {settings.max_inputs} inputs", field="inputs")
        for i, t in enumerate(self.inputs):
            check_text(t, f"inputs[{i}]", settings)


class PredictResponse(BaseModel):
    model: str = Field(description="The model that answered.")
    outputs: list[Output] = Field(description="One output per input, in order.")


class GenerateRequest(_In):
    """Generation parameters; unset ones take the model's defaults (`GET /v1/models/{m}`)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "prompt": "ROMEO:\n",
                    "max_tokens": 200,
                    "temperature": 0.8,
                    "seed": 7,
                    "stream": True,
                }
            ]
        }
    )

    prompt: str | None = Field(
        None, description="Text to continue (for a session: appended to its context)."
    )
    max_tokens: int | None = Field(None, ge=1, description="Tokens to generate (limit: settings).")
    temperature: float | None = Field(None, ge=0, le=100, description="0 = greedy.")
    top_k: int | None = Field(
        None, ge=0, le=1_000_000, description="Sample from the k most likely (0 = off)."
    )
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling mass.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Same seed, same text.")
    stop: str | Items[str] | None = Field(None, description="Stop string(s); not returned.")
    logprobs: int | None = Field(
        None, ge=0, le=20, description="Return each token's logprob and this many alternatives."
    )
    stream: bool = Field(False, description="Server-sent events, one per token.")

    def to_params(self, settings: Settings) -> GenerateParams:
        check_text(self.prompt, "prompt", settings)
        if self.max_tokens is not None and self.max_tokens > settings.max_tokens_limit:
            raise InvalidInput(
                f"max_tokens must be <= {settings.max_tokens_limit}", field="max_tokens"
            )
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > settings.max_stop or any(not s or len(s) > 64 for s in stop):
            raise InvalidInput(
                f"at most {settings.max_stop} non-empty stop strings of <= 64 characters",
                field="stop",
            )
        return GenerateParams(
            prompt=self.prompt,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            seed=self.seed,
            stop=tuple(stop),
            logprobs=self.logprobs,
        )


class Usage(BaseModel):
    prompt_tokens: int = Field(description="Tokens fed before generating (prompt or priming).")
    completion_tokens: int = Field(description="Tokens generated.")
    total_tokens: int = Field(description="prompt_tokens + completion_tokens.")


class GenerateResponse(BaseModel):
    model: str = Field(description="The model that generated.")
    text: str = Field(description="Generated text (without a matched stop string).")
    finish_reason: str = Field(description="`length` or `stop`.")
    stop: str | None = Field(None, description="The stop string that ended it.")
    usage: Usage = Field(description="Token counts.")
    seed: int = Field(description="The seed used (send it back to reproduce the text).")
    logprobs: list[dict[str, Any]] | None = Field(
        None, description="Per token: its logprob and the top alternatives (when asked)."
    )
    session_id: str | None = Field(None, description="The session generated from (if any).")
    version: int | None = Field(None, description="Session version after committing.")
    replayed: bool | None = Field(None, description="True when an Idempotency-Key replay.")


# -- sessions --------------------------------------------------------------------------------

SESSION_ID = r"^[A-Za-z0-9._:~-]{1,128}$"


class CreateSession(_In):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"model": "sentiment-lstm", "ttl_s": 600}]}
    )

    model: str | None = Field(None, description="Model to bind (optional with `state`).")
    session_id: str | None = Field(
        None, pattern=SESSION_ID, description="Client-chosen id; default: a random 192-bit id."
    )
    ttl_s: float | None = Field(None, gt=0, description="Idle TTL in seconds.")
    state: str | None = Field(
        None, max_length=64 << 20, description="A blob from `GET /v1/sessions/{id}/state`."
    )


class SessionInfo(BaseModel):
    session_id: str = Field(description="The session's id (use it in URLs).")
    model: str = Field(description="The model the session is bound to.")
    version: int = Field(description="Increments with every committed change.")
    created_at: float = Field(description="Unix time.")
    expires_at: float = Field(description="Unix time the session expires if left idle.")
    ttl_s: float = Field(description="Idle TTL in seconds.")
    tokens_seen: int = Field(description="Tokens fed into the state so far.")
    pending_chars: int = Field(description="Held-back characters of an unfinished word.")
    replayed: bool | None = Field(None, description="True when an Idempotency-Key replay.")


class FeedRequest(_In):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"text": "I expected to hate this movie, ", "expected_version": 0}]
        }
    )

    text: str = Field(min_length=1, description="Next chunk of text.")
    top_k: int = Field(5, ge=1, le=1000, description="Next tokens listed (language models).")
    expected_version: int | None = Field(
        None, ge=0, le=2**63 - 1, description="409 unless the version matches."
    )


class FeedResponse(BaseModel):
    session_id: str = Field(description="The session fed.")
    version: int = Field(description="Session version after committing this chunk.")
    tokens: int = Field(description="Tokens this chunk added to the state.")
    pending_chars: int = Field(description="Held-back characters of an unfinished word.")
    output: Output | None = Field(description="Running output on all text so far (None if none).")
    replayed: bool = Field(False, description="True when an Idempotency-Key replay.")


class ResetRequest(_In):
    model_config = ConfigDict(json_schema_extra={"examples": [{"expected_version": 3}]})

    expected_version: int | None = Field(
        None, ge=0, le=2**63 - 1, description="409 unless the version matches."
    )


class SessionGenerateRequest(GenerateRequest):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"max_tokens": 50, "temperature": 0.7, "stop": "\n\n", "expected_version": 1}
            ]
        }
    )

    expected_version: int | None = Field(
        None, ge=0, le=2**63 - 1, description="409 unless the version matches."
    )


class StateResponse(BaseModel):
    session_id: str = Field(description="The session exported.")
    model: str = Field(description="The model the state belongs to.")
    version: int = Field(description="Session version the state was taken at.")
    state: str = Field(description="Opaque, checksummed, base64 state blob.")
