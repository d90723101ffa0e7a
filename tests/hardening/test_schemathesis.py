"""Schemathesis against the OpenAPI schema of every surface (native, v2, OpenAI) on a live
server: zero 5xx, and every response conforms to what the schema declares (status codes,
content types, bodies). Bounded: a few dozen examples per operation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis import checks

from service.app import create_app
from service.settings import Settings
from tests.conftest import FIXTURE_MODELS
from tests.service.live import serve_in_thread

MAX_EXAMPLES = 30


KEY = "schemathesis-key-0123456789"


def _settings(**overrides: Any) -> Settings:
    return Settings(
        **overrides,
        models_dir=FIXTURE_MODELS,
        log_json=False,
        log_level="error",
        max_tokens_limit=32,  # keep generated cases cheap; the limit is in the schema
        max_text_chars=2000,
        max_inputs=16,
    )


# the schema is the app's own (no server needed to collect); the cases run against a live one
schema = schemathesis.openapi.from_dict(create_app(_settings(), configure_logs=False).openapi())


authed = schemathesis.openapi.from_dict(
    create_app(_settings(api_keys=f"st:{KEY}"), configure_logs=False).openapi()
)


@pytest.fixture(scope="module")
def live_url() -> Iterator[str]:
    with serve_in_thread(create_app(_settings(), configure_logs=False)) as addr:
        yield f"http://{addr}"


@pytest.fixture(scope="module")
def authed_url() -> Iterator[str]:
    app = create_app(_settings(api_keys=f"st:{KEY}"), configure_logs=False)
    with serve_in_thread(app) as addr:
        yield f"http://{addr}"


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_schema(case: schemathesis.Case, live_url: str) -> None:
    # positive_data_acceptance is off: rules no JSON schema can state (a state blob's contents,
    # `expected_version` only with `session_id`, prompts × n <= max_inputs, a model name that
    # exists) rightly answer 4xx to schema-valid requests
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
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for p in op.get("parameters", []):
                assert p.get("description"), (method, path, p["name"])
            streams = path.endswith(("/generate", "/completions")) and "/chat/" not in path
            if method == "post" and streams:
                ok = op["responses"]["200"]["content"]
                assert "text/event-stream" in ok and "application/json" in ok, path
                assert {"400", "413", "429", "504"} <= set(op["responses"]), path
    predict = spec["components"]["schemas"]["PredictRequest"]["properties"]["inputs"]
    assert predict["maxItems"] == 16 and predict["items"]["maxLength"] == 2000
