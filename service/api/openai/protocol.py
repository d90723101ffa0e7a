"""OpenAI-compatible messages (the legacy completions API), validated into a `ValidCompletion`.

Precedence of sampling values, written once: a request field when given, else OpenAI's
documented default (`max_tokens` 16, `temperature` 1, `top_p` 1, no top-k). The model
manifest's defaults are NOT used here: an OpenAI client expects OpenAI's defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from service.api.bounds import Capped, Items, StrictIn
from service.api.schemas import SESSION_ID, GenerateRequest
from service.api.surfaces import openai_body
from service.errors import InvalidInput
from service.protocol.messages import GenerateParams
from service.settings import Settings

SEED_MOD = 2**63  # the engine's seed range; OpenAI seeds are int64 and may be negative


class StreamOptions(StrictIn):
    include_usage: bool = Field(False, description="Send a last chunk with `usage`.")


class CompletionRequest(StrictIn):
    """`POST /completions`. Parameters that would change the output but are not implemented
    are refused with a 400 naming them (never silently ignored)."""

    model: str = Field(description="A language model (`GET /models`).")
    prompt: str | Items[str] | Items[int] | Items[Items[int]] = Field(
        description="Text, or a list of texts (one completion set each). Token-id prompts are "
        "not supported."
    )
    max_tokens: int | None = Field(16, ge=1, description="Tokens (characters) to generate.")
    temperature: float | None = Field(None, ge=0, le=2, description="Default 1; 0 = greedy.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus mass; default 1.")
    n: int = Field(1, ge=1, le=128, description="Completions per prompt.")
    stream: bool = Field(False, description="Server-sent events ending with `data: [DONE]`.")
    stream_options: StreamOptions | None = Field(None, description="With `stream` only.")
    logprobs: int | None = Field(
        None, ge=0, le=20, description="Each token's logprob plus this many alternatives."
    )
    echo: bool = Field(False, description="Return the prompt before the completion.")
    stop: str | Items[str] | None = Field(None, description="Up to 4 stop strings (not returned).")
    seed: int | None = Field(
        None, ge=-(2**63), le=2**64 - 1, description="Same seed, same text (reduced mod 2^63)."
    )
    user: str | None = Field(None, description="Accepted; no effect on the output.")
    suffix: str | None = Field(None, description="Not supported (must be null).")
    best_of: int | None = Field(None, ge=1, description="Only 1 (or equal to `n`) is supported.")
    presence_penalty: float | None = Field(None, description="Only 0 is supported.")
    frequency_penalty: float | None = Field(None, description="Only 0 is supported.")
    logit_bias: Capped[str, float] | None = Field(None, description="Only empty is supported.")
    # rnnserve extensions
    top_k: int | None = Field(
        None, ge=0, le=1_000_000, description="Extension: top-k sampling (0 = off)."
    )
    session_id: str | None = Field(
        None,
        pattern=SESSION_ID,
        description="Extension: continue from a native session's state (or a v2 sequence) and "
        "commit the prompt and the completion to it. Needs one prompt and `n` = 1.",
    )
    expected_version: int | None = Field(
        None,
        ge=0,
        le=2**63 - 1,
        description="Extension (with `session_id`): 409 unless the version matches.",
    )

    def validate_for(self, settings: Settings) -> ValidCompletion:
        self._refuse_unsupported()
        if isinstance(self.prompt, str):
            prompts = [self.prompt]
        elif self.prompt and all(isinstance(p, str) for p in self.prompt):
            prompts = [p for p in self.prompt if isinstance(p, str)]
        elif not self.prompt:
            raise InvalidInput("prompt must not be an empty list", field="prompt")
        else:
            raise InvalidInput(
                "token-id prompts are not supported; send text (characters are tokens here)",
                field="prompt",
            )
        if len(prompts) * self.n > settings.max_inputs:
            raise InvalidInput(
                f"prompts × n is {len(prompts) * self.n}; the limit is {settings.max_inputs}",
                field="n",
            )
        if self.session_id is not None and (len(prompts) != 1 or self.n != 1):
            raise InvalidInput("session_id needs a single prompt and n = 1", field="session_id")
        if self.expected_version is not None and self.session_id is None:
            raise InvalidInput("expected_version needs session_id", field="expected_version")
        if self.echo and self.logprobs is not None:
            raise InvalidInput("echo with logprobs is not supported", field="echo")
        choices: list[list[GenerateParams]] = []
        for prompt in prompts:
            row = []
            for j in range(self.n):
                seed = None if self.seed is None else (self.seed + j) % SEED_MOD
                native = GenerateRequest(
                    prompt=prompt,
                    max_tokens=self.max_tokens if self.max_tokens is not None else 16,
                    temperature=1.0 if self.temperature is None else self.temperature,
                    top_k=self.top_k or 0,
                    top_p=1.0 if self.top_p is None else self.top_p,
                    seed=seed,
                    stop=self.stop,
                    logprobs=self.logprobs,
                )
                row.append(native.to_params(settings))  # text, max_tokens and stop limits
            choices.append(row)
        return ValidCompletion(
            model=self.model,
            prompts=prompts,
            choices=choices,
            stream=self.stream,
            include_usage=bool(self.stream_options and self.stream_options.include_usage),
            echo=self.echo,
            logprobs=self.logprobs is not None,
            session_id=self.session_id,
            expected_version=self.expected_version,
        )

    def _refuse_unsupported(self) -> None:
        bad: dict[str, str] = {}
        if self.suffix:
            bad["suffix"] = "suffix (insertion) is not supported"
        if self.best_of not in (None, 1, self.n):
            bad["best_of"] = "best_of other than n is not supported"
        if self.presence_penalty:
            bad["presence_penalty"] = "presence_penalty is not supported (send 0 or omit it)"
        if self.frequency_penalty:
            bad["frequency_penalty"] = "frequency_penalty is not supported (send 0 or omit it)"
        if self.logit_bias:
            bad["logit_bias"] = "logit_bias is not supported"
        if self.stream_options is not None and not self.stream:
            bad["stream_options"] = "stream_options needs stream = true"
        if bad:
            first = next(iter(bad))
            raise InvalidInput("; ".join(bad.values()), field=first)


@dataclass(frozen=True)
class ValidCompletion:
    model: str
    prompts: list[str]
    choices: list[list[GenerateParams]]  # [prompt][j]: one generation per choice
    stream: bool
    include_usage: bool
    echo: bool
    logprobs: bool
    session_id: str | None
    expected_version: int | None


# -- responses ---------------------------------------------------------------------------------


class Logprobs(BaseModel):
    tokens: list[str] = Field(description="The tokens of the returned text.")
    token_logprobs: list[float] = Field(description="Each token's log-probability.")
    top_logprobs: list[dict[str, float]] = Field(description="Per token: the top alternatives.")
    text_offset: list[int] = Field(description="Per token: its character offset in the text.")


class CompletionChoice(BaseModel):
    index: int = Field(description="Choice index (prompt index × n + j).")
    text: str = Field(description="The completion (the prompt first with `echo`).")
    logprobs: Logprobs | None = Field(None, description="When `logprobs` was asked for.")
    finish_reason: Literal["stop", "length"] | None = Field(
        description="`stop` (a stop string) or `length` (`max_tokens`)."
    )


class CompletionUsage(BaseModel):
    prompt_tokens: int = Field(description="Prompt tokens (each prompt counted once).")
    completion_tokens: int = Field(description="Generated tokens, all choices.")
    total_tokens: int = Field(description="The sum.")


class Completion(BaseModel):
    id: str = Field(description="`cmpl-` + a random id.")
    object: Literal["text_completion"] = Field("text_completion", description="Always this.")
    created: int = Field(description="Unix time.")
    model: str = Field(description="The model that generated.")
    system_fingerprint: str | None = Field(None, description="fp_ + the graph's sha256 prefix.")
    choices: list[CompletionChoice] = Field(description="One per prompt × n.")
    usage: CompletionUsage | None = Field(None, description="Token counts.")
    session_id: str | None = Field(None, description="Extension: the session committed to.")
    session_version: int | None = Field(None, description="Extension: its version after.")


class ModelCard(BaseModel):
    id: str = Field(description="Model name.")
    object: Literal["model"] = Field("model", description="Always this.")
    created: int = Field(description="Unix time the artifact was written.")
    owned_by: str = Field("rnnserve", description="Always `rnnserve`.")


class ModelCardList(BaseModel):
    object: Literal["list"] = Field("list", description="Always this.")
    data: list[ModelCard] = Field(description="The language models served.")


class ErrorInfo(BaseModel):
    message: str = Field(description="What went wrong.")
    type: str = Field(description="`invalid_request_error`, `rate_limit_error` or `server_error`.")
    param: str | None = Field(None, description="The request field at fault, if any.")
    code: str | None = Field(None, description="Stable machine-readable code.")


class ErrorResponse(BaseModel):
    error: ErrorInfo = Field(description="What went wrong.")


def error_body(message: str, status: int, param: str | None, code: str | None) -> dict[str, Any]:
    """OpenAI's error shape (`service.api.surfaces.openai_body`, the registry's)."""
    return openai_body(message, status, param, code)
