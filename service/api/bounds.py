"""Request-schema building blocks that bound what a rejection costs.

pydantic reports every invalid item and every unknown key, and FastAPI turns each report into a
Python dict: a 2 MB body of a million bad `stop` items took 6 s and 1.3 GB to refuse. Every list
a client sends therefore has a length cap checked before its items, and stops at its first bad
item; every dict is capped before its entries are read; and a body with many unknown keys is
refused on the first one. Refusing costs O(limit), not O(body). The caps here are the schema's
hard ceilings; the configurable limits (`RNNSERVE_MAX_INPUTS`, `RNNSERVE_MAX_STOP`, ...) apply
after validation and are what docs/reliability.md lists.

Numbers are strict as well: `"5"` and `true` are not a `max_tokens`, and `7.9` is not an int.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")

MAX_ITEMS = 4096  # any request list (texts, stop strings, prompts, token ids per row, ...)
MAX_KEYS = 64  # any request object or map (parameters, logit_bias, ...)
_FEW_UNKNOWN = 8  # up to this many unknown keys are reported one by one, as usual

Items = Annotated[list[T], Field(max_length=MAX_ITEMS, fail_fast=True)]

# An Idempotency-Key, wherever a client sends one (a header, a WebSocket message field); the
# direct routes (`direct.py`) check the same bound before they take a request past FastAPI
IDEMPOTENCY_KEY_MAX = 256
IdempotencyKey = Annotated[str, Field(min_length=1, max_length=IDEMPOTENCY_KEY_MAX)]


def _cap_keys(value: Any) -> Any:
    if isinstance(value, dict) and len(value) > MAX_KEYS:
        raise PydanticCustomError(
            "too_long",
            "at most {limit} entries, got {n}",
            {"limit": MAX_KEYS, "n": len(value)},
        )
    return value


Capped = Annotated[dict[K, V], BeforeValidator(_cap_keys)]


class StrictIn(BaseModel):
    """The base of every request body and message: unknown fields refused, no NaN/inf, strict
    numbers and booleans, and a body of many unknown keys refused on its first."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _many_unknown_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict) or len(data) <= len(cls.model_fields) + _FEW_UNKNOWN:
            return data
        known = set(cls.model_fields) | {f.alias for f in cls.model_fields.values() if f.alias}
        unknown = [k for k in data if k not in known]
        if len(unknown) <= _FEW_UNKNOWN:
            return data
        error = PydanticCustomError(
            "extra_forbidden",
            "unknown field ({n} unknown fields in all)",
            {"n": len(unknown)},
        )
        detail = InitErrorDetails(type=error, loc=(str(unknown[0]),), input=data[unknown[0]])
        raise ValidationError.from_exception_data(cls.__name__, [detail])
