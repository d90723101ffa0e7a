"""The OpenAPI schema, made to tell the truth about what the edge does.

FastAPI's generated schema knows the routes and the pydantic models; it does not know the
middleware (API keys, body size, timeouts, per-key stream caps), the limits read from settings
at runtime, or that v2 and OpenAI routes answer validation errors with their own 400 bodies.
`install(app, settings)` patches the generated schema once, in one place:

* FastAPI's default 422 `HTTPValidationError` is replaced by the real error body of the surface
  (native `ErrorBody`; v2 and OpenAI answer 400 instead, so their 422 goes);
* every operation declares 401 (with keys on), 504 (`timeout`); operations with a body declare
  400 (malformed body), 413 and 415; generations declare 429 (`stream_limit`);
* the limits from settings become `maxLength` / `maxItems` / `maximum` on the request fields;
* path parameters get descriptions;
* every `text/event-stream` response gets the schema of its events (`openapi_streams.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from service.api import openapi_streams
from service.api.surfaces import ALWAYS_DOCUMENTED_OPEN, is_stream, surface_of
from service.settings import Settings

JSON = dict[str, Any]

_PATH_PARAMS = {
    "model": "Model name (`GET /v1/models` lists them).",
    "session_id": "Session id: server-made (192 random bits) or client-chosen "
    "(`[A-Za-z0-9._:~-]{1,128}`); a v2 `sequence_id` names the same session.",
    "version": "Model version (the manifest's `version`).",
}
_OPEN = ALWAYS_DOCUMENTED_OPEN


def _surface(path: str) -> str:
    """The error shape a path's operations document: v2's, OpenAI's, or the native one."""
    name = surface_of(path).name
    return name if name in ("v2", "openai") else "native"


def _error_refs(components: JSON) -> dict[str, str]:
    names = list(components)

    def find(suffix: str, plain: str) -> str:
        hit = next((n for n in names if n.endswith(suffix)), plain)
        return f"#/components/schemas/{hit}"

    return {
        "native": "#/components/schemas/ErrorBody",
        "v2": find("v2__protocol__ErrorResponse", "ErrorResponse"),
        "openai": find("openai__protocol__ErrorResponse", "ErrorResponse"),
    }


def _response(ref: str, description: str, retry_after: bool = False) -> JSON:
    out: JSON = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": ref}}},
    }
    if retry_after:
        out["headers"] = {
            "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "string"}}
        }
    return out


def _patch_operation(path: str, method: str, op: JSON, refs: dict[str, str], auth: bool) -> None:
    surface = _surface(path)
    ref = refs[surface]
    res: JSON = op.setdefault("responses", {})
    default_422 = "HTTPValidationError" in str(res.get("422", ""))
    if default_422:
        if surface == "native":
            res["422"] = _response(ref, "Invalid input; `error.field` names the field")
        else:
            del res["422"]
            res.setdefault("400", _response(ref, "Malformed or invalid request"))
    if path in _OPEN:
        return
    if auth:
        res.setdefault("401", _response(ref, "API key missing or invalid (WWW-Authenticate)"))
    res.setdefault("504", _response(ref, "The response did not start in time", retry_after=True))
    if "requestBody" in op:
        res.setdefault("400", _response(ref, "The body is not valid JSON (or is truncated)"))
        res.setdefault("413", _response(ref, "The body is larger than `RNNSERVE_MAX_BODY_BYTES`"))
        res.setdefault(
            "415",
            _response(ref, "The body is not JSON in UTF-8 (its Content-Type or its bytes)"),
        )
    if is_stream("POST", path) and method == "post" and "/chat/" not in path:
        res.setdefault(
            "429",
            _response(ref, "Too many streams open for this API key", retry_after=True),
        )
    _patch_streams(res, surface, refs)
    for p in op.get("parameters", []):
        if p.get("in") == "path" and not p.get("description"):
            p["description"] = _PATH_PARAMS.get(p["name"], p["name"])
            p.setdefault("schema", {}).setdefault("minLength", 1)


def _patch_streams(res: JSON, surface: str, refs: dict[str, str]) -> None:
    """Describe each event of a server-sent event stream (not the stream as a string)."""
    for answer in res.values():
        content = answer.get("content", {})
        if "text/event-stream" in content:
            event = (
                openapi_streams.openai_event(refs["openai"])
                if surface == "openai"
                else openapi_streams.native_event()
            )
            # a new dict: FastAPI shares the route's `responses=` entry between operations
            content["text/event-stream"] = {**content["text/event-stream"], "schema": event}


def _branches(prop: JSON, kind: str) -> list[JSON]:
    """The sub-schemas of `prop` of JSON type `kind` (itself, or its anyOf branches)."""
    if prop.get("type") == kind:
        return [prop]
    return [b for b in prop.get("anyOf", []) if b.get("type") == kind]


def _limit(schema: JSON, field: str, kind: str, **bounds: int) -> None:
    prop = schema.get("properties", {}).get(field)
    if prop is None:
        return
    for b in _branches(prop, kind):
        b.update(bounds)


def _limit_stop(schema: JSON, max_stop: int) -> None:
    _limit(schema, "stop", "string", minLength=1, maxLength=64)
    _limit(schema, "stop", "array", maxItems=max_stop)
    for arr in _branches(schema.get("properties", {}).get("stop", {}), "array"):
        arr.setdefault("items", {}).update({"minLength": 1, "maxLength": 64})


def _patch_limits(components: JSON, s: Settings) -> None:
    text = s.max_text_chars
    for name in ("GenerateRequest", "SessionGenerateRequest"):
        if name in components:
            c = components[name]
            _limit(c, "prompt", "string", maxLength=text)
            _limit(c, "max_tokens", "integer", maximum=s.max_tokens_limit)
            _limit_stop(c, s.max_stop)
    if "PredictRequest" in components:
        c = components["PredictRequest"]
        _limit(c, "inputs", "array", maxItems=s.max_inputs)
        for arr in _branches(c["properties"]["inputs"], "array"):
            arr.setdefault("items", {}).update({"minLength": 1, "maxLength": text})
    if "FeedRequest" in components:
        _limit(components["FeedRequest"], "text", "string", maxLength=text)
    if "CompletionRequest" in components:
        c = components["CompletionRequest"]
        _limit(c, "max_tokens", "integer", maximum=s.max_tokens_limit)
        _limit(c, "n", "integer", maximum=min(128, s.max_inputs))
        _limit(c, "prompt", "string", maxLength=text)
        _limit_stop(c, s.max_stop)


def patch(schema: JSON, settings: Settings, auth: bool) -> JSON:
    components: JSON = schema.get("components", {}).get("schemas", {})
    refs = _error_refs(components)
    openapi_streams.add_components(components)
    for path, ops in schema.get("paths", {}).items():
        for method, op in ops.items():
            _patch_operation(path, method, op, refs, auth)
    _patch_limits(components, settings)
    if "HTTPValidationError" not in str(schema.get("paths")):
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
    if auth:
        schema["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "An API key."}
        }
        for path, ops in schema.get("paths", {}).items():
            if path not in _OPEN:
                for op in ops.values():
                    op["security"] = [{"bearer": []}]
    return schema


def install(app: FastAPI, settings: Settings, auth: bool) -> None:
    generate: Callable[[], JSON] = app.openapi

    def openapi() -> JSON:
        if app.openapi_schema is None:
            app.openapi_schema = patch(generate(), settings, auth)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
