"""Schemathesis against the OpenAPI schema of every surface (native, v2, OpenAI) on a live
server: zero 5xx, and every response conforms to what the schema declares (status codes,
content types, bodies, each event of a server-sent stream); 30 examples an operation.

Random path parameters and model names would only ever meet 404, so half the cases name a
model or session that exists (the hooks below): that is what takes the fuzzer past the lookup,
into the streams and the state import. The import gets blobs the server really exported,
then damaged in the ways a client could: a header field or array entry replaced by any JSON
value, array values replaced by any float32, truncated, or random bytes; the checksum is
recomputed where the damage should reach the validation behind it."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import struct
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from schemathesis import checks
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import FailureGroup

from service.app import create_app
from service.sessions.blob import FORMAT, MAGIC
from service.settings import Settings
from tests.conftest import FIXTURE_MODELS
from tests.servers import serve_in_thread
from tests.service.conftest import ALL_MODELS, CLS, LM

MAX_EXAMPLES = 30
# sessions the cases may name (recreated when a case deleted one)
SESSIONS = {"st-lm": LM, "st-cls": CLS}
# the blobs the live server exported (one per model), filled by the `live_url` fixture before
# any case is generated: the hooks below draw from them
EXPORTED: list[bytes] = []

KEY = "schemathesis-key-0123456789"


def _settings(**overrides: Any) -> Settings:
    return Settings(
        **{"models_dir": FIXTURE_MODELS, **overrides},
        log_json=False,
        log_level="error",
        max_tokens_limit=32,  # keep generated cases cheap; the limit is in the schema
        max_text_chars=2000,
        max_inputs=16,
    )


# every stream is read to its end (schemathesis stops at 20 events by default), so its `done`,
# `error` and `[DONE]` are checked too: at most 16 choices x 32 tokens, plus their last chunks
CONFIG = SchemathesisConfig.from_dict({"max-stream-events": 1000})

# the schema is the app's own (no server needed to collect); the cases run against a live one
schema = schemathesis.openapi.from_dict(
    create_app(_settings(), configure_logs=False).openapi(), config=CONFIG
)
authed = schemathesis.openapi.from_dict(
    create_app(_settings(api_keys=f"st:{KEY}"), configure_logs=False).openapi(), config=CONFIG
)


def _ensure_sessions(http: httpx.Client) -> None:
    for sid, model in SESSIONS.items():
        if http.get(f"/v1/sessions/{sid}").status_code == 404:
            r = http.post("/v1/sessions", json={"model": model, "session_id": sid})
            assert r.status_code == 201, r.text


def _export(url: str, model: str) -> bytes:
    sid = httpx.post(f"{url}/v1/sessions", json={"model": model}).json()["session_id"]
    assert httpx.post(f"{url}/v1/sessions/{sid}/feed", json={"text": "the end"}).is_success
    return base64.b64decode(httpx.get(f"{url}/v1/sessions/{sid}/state").json()["state"])


# the model the cases may load and unload (the repository routes name no other: unloading the
# models the other cases use would leave them only 404s)
SCRATCH = "st-scratch"


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    models = tmp_path_factory.mktemp("models")
    for m in ALL_MODELS:
        shutil.copytree(FIXTURE_MODELS / m, models / m)
    scratch = shutil.copytree(FIXTURE_MODELS / "tiny-char-rnn", models / SCRATCH)
    manifest = json.loads((scratch / "manifest.json").read_text())
    (scratch / "manifest.json").write_text(json.dumps({**manifest, "name": SCRATCH}))
    app = create_app(_settings(models_dir=models), configure_logs=False)
    with serve_in_thread(app) as addr:
        url = f"http://{addr}"
        EXPORTED[:] = [_export(url, m) for m in ALL_MODELS]
        yield url


@pytest.fixture(scope="module")
def http(live_url: str) -> Iterator[httpx.Client]:
    """One client for every case's checks (`httpx.get` builds one, SSL context and all, a call)."""
    with httpx.Client(base_url=live_url, timeout=30.0) as client:
        yield client


# -- what the hooks draw: real names, real and damaged state blobs ---------------------------

_HEAD = struct.Struct("<HI")  # the blob's format number and header length, after MAGIC
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)


def _split(blob: bytes) -> tuple[dict[str, Any], bytes]:
    """(header, array bytes) of a blob (`service/sessions/blob.py` has the layout)."""
    _, hlen = _HEAD.unpack_from(blob, len(MAGIC))
    start = len(MAGIC) + _HEAD.size
    header: dict[str, Any] = json.loads(blob[start : start + hlen])
    return header, blob[start + hlen : -32]


def _frame(header: dict[str, Any], arrays: bytes) -> bytes:
    """A blob of this header and these array bytes, with its checksum recomputed (NaN and
    infinities go into the header as the non-standard JSON that Python would write)."""
    text = json.dumps(header, separators=(",", ":")).encode()
    body = MAGIC + _HEAD.pack(FORMAT, len(text)) + text + arrays
    return body + hashlib.sha256(body).digest()


@st.composite
def _header_edit(draw: st.DrawFn, blob: bytes) -> bytes:
    header, arrays = _split(blob)
    if header["arrays"] and draw(st.booleans()):
        entry = draw(st.sampled_from(header["arrays"]))
        entry[draw(st.sampled_from(["name", "dtype", "shape"]))] = draw(_JSON_VALUES)
    else:
        keys = [*header, "extra"]
        header[draw(st.sampled_from(keys))] = draw(_JSON_VALUES)
    return _frame(header, arrays)


@st.composite
def _values_edit(draw: st.DrawFn, blob: bytes) -> bytes:
    header, arrays = _split(blob)
    values = bytearray(arrays)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(values) // 4 - 1)) * 4  # one float32 (float16 blobs too)
        values[at : at + 4] = struct.pack("<f", draw(st.floats(width=32)))
    return _frame(header, bytes(values))


def _states() -> st.SearchStrategy[str]:
    """A `state` field: a real blob, one damaged behind its checksum, cut short, or noise."""
    blobs = st.sampled_from(EXPORTED)
    damaged = st.one_of(
        blobs,
        blobs.flatmap(_header_edit),
        blobs.flatmap(_values_edit),
        blobs.flatmap(lambda b: st.integers(0, len(b) - 1).map(lambda n: b[:n])),
        st.binary(max_size=64).map(lambda junk: MAGIC + junk),
    )
    return damaged.map(lambda b: base64.b64encode(b).decode())


def _either(value: Any, real: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.just(value), real)


def _with(d: dict[str, Any], key: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return values.map(lambda v: {**d, key: v})


# A hook sees negative cases too (a field made invalid on purpose): it only replaces a value the
# schema allows with another one it allows, so a negative case stays negative.


def flatmap_path_parameters(ctx: Any, params: Any) -> st.SearchStrategy[Any]:
    if not isinstance(params, dict):
        return st.just(params)
    repository = ctx.operation is not None and "/repository/" in ctx.operation.path
    if repository and isinstance(params.get("model"), str):
        return st.just({**params, "model": SCRATCH})
    for key, names in (("model", ALL_MODELS), ("session_id", list(SESSIONS))):
        if isinstance(params.get(key), str) and params[key]:
            return _either(params, _with(params, key, st.sampled_from(names)))
    return st.just(params)


def flatmap_body(ctx: Any, body: Any) -> st.SearchStrategy[Any]:
    if not isinstance(body, dict):
        return st.just(body)
    options: list[st.SearchStrategy[Any]] = [st.just(body)]
    if isinstance(body.get("model"), str):  # completions and session create
        options.append(_with(body, "model", st.sampled_from(ALL_MODELS)))
    importing = ctx.operation is not None and ctx.operation.label == "POST /v1/sessions"
    if importing and (body.get("state") is None or isinstance(body["state"], str)):
        options.append(_with(body, "state", _states()))
        if isinstance(body.get("model"), str):  # `model` may be left out with a state
            options.append(
                _with({k: v for k, v in body.items() if k != "model"}, "state", _states())
            )
    return st.one_of(options)


def _hooks(test: Callable[..., None]) -> Callable[..., None]:
    """Apply the hooks above to one test (not to the schema: the keys test stays as it was)."""
    test = schema.hooks.apply(flatmap_path_parameters)(test)
    return schema.hooks.apply(flatmap_body)(test)


@pytest.fixture(scope="module")
def authed_url() -> Iterator[str]:
    app = create_app(_settings(api_keys=f"st:{KEY}"), configure_logs=False)
    with serve_in_thread(app) as addr:
        yield f"http://{addr}"


@_hooks
@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_schema(
    case: schemathesis.Case, live_url: str, http: httpx.Client
) -> None:
    # positive_data_acceptance is off: rules no JSON schema can state (a state blob's contents,
    # `expected_version` only with `session_id`, prompts × n <= max_inputs, a model name that
    # exists) rightly answer 4xx to schema-valid requests
    _ensure_sessions(http)
    case.call_and_validate(
        base_url=live_url, timeout=30, excluded_checks=[checks.positive_data_acceptance]
    )


# the import on its own, with schema-valid bodies only (the main test sends it the invalid ones):
# every case is a create, many of them with a real or damaged blob
importer = schemathesis.openapi.from_dict(
    create_app(_settings(), configure_logs=False).openapi(),
    config=SchemathesisConfig.from_dict(
        {"max-stream-events": 1000, "generation": {"mode": "positive"}}
    ),
).include(method="POST", path="/v1/sessions")


@_hooks
@importer.parametrize()
@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_state_import_never_answers_5xx(case: schemathesis.Case, live_url: str) -> None:
    # issue 15.8: no body makes the import answer 500 (there is no v2 import: a v2 sequence
    # always starts from a fresh state)
    case.call_and_validate(
        base_url=live_url, timeout=30, excluded_checks=[checks.positive_data_acceptance]
    )


@authed.parametrize()
@settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_with_keys_on_every_operation_checks_the_key(
    case: schemathesis.Case, authed_url: str
) -> None:
    # the same checks, plus `ignored_auth`: the operation without the key must answer 401
    case.call_and_validate(
        base_url=authed_url,
        timeout=30,
        headers={"Authorization": f"Bearer {KEY}"},
        excluded_checks=[checks.positive_data_acceptance],
    )


def test_schema_documents_every_field_parameter_and_stream() -> None:
    spec = create_app(_settings(), configure_logs=False).openapi()
    missing = [
        f"{name}.{prop}"
        for name, comp in spec["components"]["schemas"].items()
        for prop, sub in comp.get("properties", {}).items()
        if not sub.get("description")
    ]
    assert not missing, missing
    assert "HTTPValidationError" not in str(spec)  # a body the server never sends
    sse_routes: set[str] = set()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for p in op.get("parameters", []):
                assert p.get("description"), (method, path, p["name"])
            streams = path.endswith(("/generate", "/completions")) and "/chat/" not in path
            if method == "post" and streams:
                ok = op["responses"]["200"]["content"]
                assert "text/event-stream" in ok and "application/json" in ok, path
                assert {"400", "413", "429", "504"} <= set(op["responses"]), path
            for answer in op["responses"].values():
                # one event, not the stream as a string (OpenAPI 3.1: no `itemSchema`)
                sse = answer.get("content", {}).get("text/event-stream")
                if sse is not None:
                    assert sse["schema"]["type"] == "object", path
                    assert "data" in sse["schema"]["required"] and "itemSchema" not in sse
                    sse_routes.add(path)
    assert sse_routes == {
        "/v1/models/{model}/generate",
        "/v1/sessions/{session_id}/generate",
        "/v1/completions",
        "/openai/v1/completions",
    }
    schemathesis.openapi.from_dict(spec).validate()  # a valid OpenAPI 3.1 document
    predict = spec["components"]["schemas"]["PredictRequest"]["properties"]["inputs"]
    assert predict["maxItems"] == 16 and predict["items"]["maxLength"] == 2000


def _stream_case(path: str, **kwargs: Any) -> schemathesis.Case:
    return schema[path]["POST"].Case(media_type="application/json", **kwargs)


def test_every_sse_event_is_checked_against_its_schema(live_url: str, http: httpx.Client) -> None:
    # each surface's stream with everything it can carry (logprobs per token, several choices,
    # echo, usage), held to the schema of its events: schemathesis parses the stream and
    # validates every event's `data` against its `contentSchema`
    _ensure_sessions(http)
    cases = [
        _stream_case(
            "/v1/models/{model}/generate",
            path_parameters={"model": LM},
            body={"prompt": "the ", "max_tokens": 12, "logprobs": 2, "stream": True},
        ),
        _stream_case(
            "/v1/sessions/{session_id}/generate",
            path_parameters={"session_id": "st-lm"},
            body={"max_tokens": 5, "stream": True},
        ),
    ]
    body = {"model": LM, "prompt": ["a", "b"], "n": 2, "max_tokens": 6, "stream": True}
    body |= {"stream_options": {"include_usage": True}}
    cases += [
        _stream_case("/v1/completions", body={**body, "logprobs": 1}),
        _stream_case("/openai/v1/completions", body={**body, "echo": True}),
    ]
    for case in cases:
        response = case.call(base_url=live_url, timeout=30)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"][0].startswith("text/event-stream")
        assert response.text.rstrip().endswith("data: [DONE]")
        case.validate_response(response, excluded_checks=[checks.positive_data_acceptance])


def test_an_event_off_its_schema_fails_the_check(live_url: str) -> None:
    # the check bites: the same stream, held to a schema whose `done` needs a field it lacks
    spec = create_app(_settings(), configure_logs=False).openapi()
    sse = spec["paths"]["/v1/models/{model}/generate"]["post"]["responses"]["200"]["content"]
    done = sse["text/event-stream"]["schema"]["allOf"][1]["then"]["properties"]["data"]
    done["contentSchema"] = {"type": "object", "required": ["no_such_field"]}
    strict = schemathesis.openapi.from_dict(spec, config=CONFIG)
    case = strict["/v1/models/{model}/generate"]["POST"].Case(
        path_parameters={"model": LM},
        body={"prompt": "the ", "max_tokens": 3, "stream": True},
        media_type="application/json",
    )
    response = case.call(base_url=live_url, timeout=30)
    with pytest.raises(FailureGroup, match="SSE event violates schema"):
        case.validate_response(response, excluded_checks=[checks.positive_data_acceptance])


def test_seeds_the_server_draws_round_trip_through_any_json_client(http: httpx.Client) -> None:
    # issue 15.1: a random seed is below 2^53, so a JSON client that reads numbers as doubles
    # (every browser) gets it exactly, and sending it back gives the same text
    spec = create_app(_settings(), configure_logs=False).openapi()
    accepted = spec["components"]["schemas"]["GenerateRequest"]["properties"]["seed"]["anyOf"][0]
    url = f"/v1/models/{LM}/generate"
    for _ in range(40):
        first = http.post(url, json={"prompt": "the ", "max_tokens": 24}).json()
        seed = first["seed"]
        assert 0 <= seed < 2**53 and float(seed) == seed
        assert accepted["minimum"] <= seed <= accepted["maximum"]
    replay = http.post(url, json={"prompt": "the ", "max_tokens": 24, "seed": seed}).json()
    assert replay["text"] == first["text"] and replay["seed"] == seed
