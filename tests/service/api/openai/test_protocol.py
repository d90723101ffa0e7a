"""OpenAI request validation into engine parameters (no server)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from service.api.openai.protocol import SEED_MOD, CompletionRequest
from service.errors import InvalidInput
from service.settings import Settings

SETTINGS = Settings(max_inputs=8, max_tokens_limit=100)


def valid(**kw: Any) -> Any:
    return CompletionRequest.model_validate({"model": "m", "prompt": "hi", **kw}).validate_for(
        SETTINGS
    )


def test_openai_defaults_not_manifest_defaults() -> None:
    v = valid()
    (p,) = v.choices[0]
    assert (p.max_tokens, p.temperature, p.top_p, p.top_k) == (16, 1.0, 1.0, 0)
    assert p.seed is None and p.stop == () and p.logprobs is None and p.prompt == "hi"


def test_choices_and_seeds() -> None:
    v = valid(prompt=["a", "b"], n=3, seed=-1, stop="x", temperature=0, max_tokens=5)
    assert v.prompts == ["a", "b"] and [len(r) for r in v.choices] == [3, 3]
    assert [p.seed for p in v.choices[0]] == [SEED_MOD - 1, 0, 1]
    assert v.choices[1][0].prompt == "b" and v.choices[1][0].stop == ("x",)
    assert all(p.temperature == 0 and p.max_tokens == 5 for row in v.choices for p in row)


def test_stream_options_and_extensions() -> None:
    v = valid(stream=True, stream_options={"include_usage": True}, top_k=3, session_id="s-1")
    assert v.stream and v.include_usage and v.session_id == "s-1"
    assert v.choices[0][0].top_k == 3


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"suffix": "end"}, "suffix"),
        ({"best_of": 3}, "best_of"),
        ({"presence_penalty": 0.1}, "presence_penalty"),
        ({"frequency_penalty": -1}, "frequency_penalty"),
        ({"logit_bias": {"1": 2.0}}, "logit_bias"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"prompt": [1, 2]}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": ["a"] * 3, "n": 3}, "n"),
        ({"session_id": "s", "n": 2}, "session_id"),
        ({"expected_version": 1}, "expected_version"),
        ({"echo": True, "logprobs": 1}, "echo"),
        ({"max_tokens": 101}, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ],
)
def test_refused_with_the_field_named(kw: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as e:
        valid(**kw)
    assert e.value.field == field


def test_zero_penalties_and_best_of_n_are_fine() -> None:
    valid(presence_penalty=0, frequency_penalty=0.0, best_of=2, n=2, logit_bias={}, user="u")


@pytest.mark.parametrize(
    "kw", [{"temperature": 2.5}, {"top_p": 0}, {"n": 0}, {"mirostat": 1}, {"seed": 2**64}]
)
def test_schema_limits(kw: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate({"model": "m", "prompt": "x", **kw})
