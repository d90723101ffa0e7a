"""What each server-sent event of a stream looks like, for the OpenAPI schema.

FastAPI documents a `text/event-stream` response as an opaque string. The document is OpenAPI
3.1, whose Media Type Object has no `itemSchema` (that is 3.2, and a 3.1 validator rejects it);
for 3.1, tools that check streams (schemathesis among them) read the `schema` of
`text/event-stream` as the schema of ONE event, parsed into `{"event", "data", "id"?,
"retry"?}` (`event` is `message` when the frame has no `event:` line). So that is what goes
there: per event name, `data` is a string holding JSON (`contentMediaType`) whose
`contentSchema` is the real body: a token, the final response, an error, or the `[DONE]`
sentinel. The frames themselves are written by `service/api/streaming.py` (native) and
`service/api/openai/serving.py` (OpenAI); keep the two in step.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

JSON = dict[str, Any]
REF = "#/components/schemas/{model}"
DONE = "[DONE]"


class StreamTopLogprob(BaseModel):
    token: str = Field(description="An alternative token.")
    logprob: float = Field(description="Its log-probability.")


class StreamTokenLogprob(BaseModel):
    logprob: float = Field(description="The token's log-probability under the model.")
    top: list[StreamTopLogprob] = Field(description="The most likely tokens (`logprobs` of them).")


class StreamToken(BaseModel):
    """The data of a native `token` event."""

    text: str = Field(
        description="The token's text (may be empty while a stop string could start)."
    )
    index: int = Field(ge=0, description="The token's position in the generation (0-based).")
    token_id: int = Field(ge=0, description="The token's id in the model's vocabulary.")
    logprob: StreamTokenLogprob | None = Field(
        None, description="With `logprobs` only: this token's logprob and its alternatives."
    )


def add_components(components: JSON) -> None:
    """Put the event data models into `components` (never replacing one already there)."""
    _, defs = models_json_schema([(StreamToken, "serialization")], ref_template=REF)
    for name, sub in defs.get("$defs", {}).items():
        components.setdefault(name, sub)


def _ref(name: str) -> JSON:
    return {"$ref": REF.format(model=name)}


def _json_data(schema: JSON) -> JSON:
    return {
        "properties": {
            "data": {"contentMediaType": "application/json", "contentSchema": schema},
        }
    }


def _when(event: str, then: JSON) -> JSON:
    return {"if": {"required": ["event"], "properties": {"event": {"const": event}}}, "then": then}


def _done_sentinel() -> JSON:
    return {"properties": {"data": {"const": DONE}}}


def native_event() -> JSON:
    """One event of `POST .../generate` with `stream: true` (see `service/api/streaming.py`)."""
    return {
        "type": "object",
        "description": "One server-sent event: `token` per token, then `done` (or `error`), "
        "then the unnamed `data: [DONE]`.",
        "required": ["data"],
        "properties": {
            "event": {
                "enum": ["token", "done", "error", "message"],
                "description": "`message` is the unnamed terminal frame.",
            },
            "data": {"type": "string", "description": "JSON, or `[DONE]` last."},
        },
        "allOf": [
            _when("token", _json_data(_ref("StreamToken"))),
            _when("done", _json_data(_ref("GenerateResponse"))),
            _when("error", _json_data(_ref("ErrorBody"))),
            _when("message", _done_sentinel()),
        ],
    }


def openai_event(error_ref: str) -> JSON:
    """One event of a streamed completion (see `service/api/openai/serving.py`)."""
    return {
        "type": "object",
        "description": "One server-sent event (all unnamed): a completion chunk per token and "
        "choice, an error instead, then `data: [DONE]`.",
        "required": ["data"],
        "properties": {
            "event": {"const": "message", "description": "The frames carry no `event:` line."},
            "data": {"type": "string", "description": "A JSON chunk, or `[DONE]` last."},
        },
        "if": {"required": ["data"], **_done_sentinel()},
        "else": _json_data({"anyOf": [_ref("Completion"), {"$ref": error_ref}]}),
    }
