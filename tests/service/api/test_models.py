from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import numpy as np
import pytest

from service.errors import Overloaded
from tests.service.conftest import ALL_MODELS, CHAR_MODELS, CLS, LM, ClientFactory, app_of


async def test_health_ready_models(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    r = await client.get("/readyz")
    assert r.status_code == 200 and r.json()["ready"] and set(ALL_MODELS) <= set(r.json()["models"])
    names = [m["name"] for m in (await client.get("/v1/models")).json()["models"]]
    assert set(ALL_MODELS) <= set(names)
    info = (await client.get(f"/v1/models/{CLS}")).json()
    assert (
        info["task"] == "classify" and info["labels"] and info["provider"] == "CPUExecutionProvider"
    )
    assert info["state_bytes"] > 0 and info["training"] is not None
    r = await client.get("/v1/models/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


async def test_predict_classifier_and_lm(client: httpx.AsyncClient) -> None:
    r = await client.post(f"/v1/models/{CLS}/predict", json={"inputs": ["a great film", "awful."]})
    assert r.status_code == 200, r.text
    outs = r.json()["outputs"]
    assert len(outs) == 2 and all(o["label"] in o["probs"] for o in outs)
    assert all(abs(sum(o["probs"].values()) - 1) < 1e-5 for o in outs)
    r = await client.post(f"/v1/models/{LM}/predict", json={"inputs": ["To be or no"], "top_k": 3})
    nxt = r.json()["outputs"][0]["next"]
    assert len(nxt) == 3 and nxt[0]["prob"] >= nxt[1]["prob"] >= nxt[2]["prob"]


async def test_batched_predictions_equal_single_ones(client: httpx.AsyncClient) -> None:
    texts = ["the movie was great", "bad", "i did not like it at all, the plot was thin", "ok"]
    single = [
        (await client.post(f"/v1/models/{CLS}/predict", json={"inputs": [t]})).json()["outputs"][0]
        for t in texts
    ]
    batch = (await client.post(f"/v1/models/{CLS}/predict", json={"inputs": texts})).json()[
        "outputs"
    ]
    for a, b in zip(single, batch, strict=True):
        assert np.allclose(list(a["probs"].values()), list(b["probs"].values()), atol=1e-5)


@pytest.mark.parametrize("model", CHAR_MODELS)
async def test_generate_json_is_seeded(client: httpx.AsyncClient, model: str) -> None:
    body = {"prompt": "ROMEO:", "max_tokens": 20, "seed": 42, "temperature": 1.0, "top_p": 0.9}
    a = (await client.post(f"/v1/models/{model}/generate", json=body)).json()
    b = (await client.post(f"/v1/models/{model}/generate", json=body)).json()
    assert a["text"] == b["text"] and len(a["text"]) == 20
    assert a["finish_reason"] == "length" and a["seed"] == 42
    assert a["usage"] == {"prompt_tokens": 6, "completion_tokens": 20, "total_tokens": 26}


async def test_generate_greedy_stop_logprobs_and_priming(client: httpx.AsyncClient) -> None:
    g = (
        await client.post(f"/v1/models/{LM}/generate", json={"max_tokens": 30, "temperature": 0})
    ).json()
    assert g["usage"]["prompt_tokens"] == 1  # primed with the manifest's prime_text
    assert len(g["text"]) == 30
    stop = g["text"][5:7]
    s = (
        await client.post(
            f"/v1/models/{LM}/generate", json={"max_tokens": 30, "temperature": 0, "stop": [stop]}
        )
    ).json()
    assert s["finish_reason"] == "stop" and s["stop"] == stop
    assert g["text"].startswith(s["text"]) and stop not in s["text"]
    lp = (
        await client.post(
            f"/v1/models/{LM}/generate", json={"max_tokens": 4, "temperature": 0, "logprobs": 2}
        )
    ).json()
    assert len(lp["logprobs"]) == 4 and all(len(x["top"]) == 2 for x in lp["logprobs"])
    assert all(x["logprob"] == x["top"][0]["logprob"] for x in lp["logprobs"])  # greedy = best


async def test_generate_sse(client: httpx.AsyncClient) -> None:
    body = {"prompt": "Hi", "max_tokens": 8, "seed": 3, "stream": True}
    async with client.stream("POST", f"/v1/models/{LM}/generate", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = "".join([c async for c in r.aiter_text()])
    frames = [f for f in raw.split("\n\n") if f]
    events = [
        (f.split("\n")[0][7:] if f.startswith("event:") else None, f.split("data: ", 1)[1])
        for f in frames
    ]
    kinds = [e for e, _ in events]
    assert kinds == ["token"] * 8 + ["done", None] and events[-1][1] == "[DONE]"
    done = json.loads(events[-2][1])
    assert done["text"] == "".join(json.loads(d)["text"] for e, d in events if e == "token")
    plain = (await client.post(f"/v1/models/{LM}/generate", json={**body, "stream": False})).json()
    assert plain["text"] == done["text"]


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "field"),
    [
        (f"/v1/models/{CLS}/predict", {"inputs": []}, 422, "invalid_input", "inputs"),
        (f"/v1/models/{CLS}/predict", {"inputs": [3]}, 422, "invalid_input", "inputs[0]"),
        (f"/v1/models/{CLS}/predict", {"inputs": ["x"], "bogus": 1}, 422, "invalid_input", "bogus"),
        (f"/v1/models/{CLS}/predict", {"inputs": ["", "x"]}, 422, "invalid_input", "inputs[0]"),
        (f"/v1/models/{CLS}/predict", {"inputs": ["x" * 300]}, 422, "invalid_input", "inputs[0]"),
        (
            f"/v1/models/{LM}/predict",
            {"inputs": ["ok", "\u2603"]},
            422,
            "unknown_characters",
            "inputs[1]",
        ),
        (f"/v1/models/{LM}/predict", {"inputs": ["x"], "top_k": 0}, 422, "invalid_input", "top_k"),
        (f"/v1/models/{LM}/generate", {"max_tokens": 0}, 422, "invalid_input", "max_tokens"),
        (f"/v1/models/{LM}/generate", {"max_tokens": 10**6}, 422, "invalid_input", "max_tokens"),
        (f"/v1/models/{LM}/generate", {"temperature": -1}, 422, "invalid_input", "temperature"),
        (f"/v1/models/{LM}/generate", {"top_p": 0}, 422, "invalid_input", "top_p"),
        (f"/v1/models/{LM}/generate", {"seed": -1}, 422, "invalid_input", "seed"),
        (f"/v1/models/{LM}/generate", {"stop": ["a"] * 9}, 422, "invalid_input", "stop"),
        (f"/v1/models/{LM}/generate", {"prompt": "\u2603"}, 422, "unknown_characters", "prompt"),
        (f"/v1/models/{CLS}/generate", {}, 400, "unsupported_task", "model"),
        ("/v1/models/nope/predict", {"inputs": ["x"]}, 404, "model_not_found", "model"),
    ],
)
async def test_bad_inputs_are_documented_4xx(
    make_client: ClientFactory, path: str, body: object, status: int, code: str, field: str
) -> None:
    async with make_client(max_text_chars=200) as client:
        r = await client.post(path, json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert r.json()["error"]["field"] == field


async def test_malformed_json_and_unknown_route(client: httpx.AsyncClient) -> None:
    r = await client.post(
        f"/v1/models/{CLS}/predict", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert r.status_code in (400, 422) and r.json()["error"]["field"] == "body"
    r = await client.get("/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await client.get("/v2/nothing")  # under v2's prefix: v2's shape (test_surfaces.py)
    assert r.status_code == 404 and isinstance(r.json()["error"], str)


async def test_metrics_exposed(client: httpx.AsyncClient) -> None:
    await client.post(f"/v1/models/{LM}/generate", json={"max_tokens": 3})
    text = (await client.get("/metrics")).text
    for name in (
        "rnnserve_requests_total",
        "rnnserve_engine_step_seconds_bucket",
        "rnnserve_time_to_first_token_seconds_bucket",
        "rnnserve_batch_size_bucket",
        "rnnserve_model_info",
        "rnnserve_live_sessions",
        "rnnserve_queue_depth",
    ):
        assert name in text, name
    assert 'provider="CPUExecutionProvider"' in text
    assert 'route="/v1/models/{model}/generate"' in text


async def test_openapi_schema_documents_errors_and_streams(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    gen = spec["paths"]["/v1/sessions/{session_id}/generate"]["post"]
    assert "text/event-stream" in gen["responses"]["200"]["content"]
    assert {"404", "409", "422"} <= set(gen["responses"])
    err = gen["responses"]["409"]["content"]["application/json"]["schema"]["$ref"]
    assert err.endswith("/ErrorBody")
    assert (await client.get("/docs")).status_code == 200


async def test_every_response_carries_a_request_id(client: httpx.AsyncClient) -> None:
    ids = [(await client.get("/healthz")).headers["x-request-id"] for _ in range(50)]
    assert len(set(ids)) == 50 and all(len(i) >= 16 and i.isalnum() for i in ids)
    r = await client.get("/healthz", headers={"X-Request-ID": "trace-abc-123"})
    assert r.headers["x-request-id"] == "trace-abc-123"  # a caller's own id is kept


async def test_only_language_models_describe_sampling_defaults(client: httpx.AsyncClient) -> None:
    models = {m["name"]: m for m in (await client.get("/v1/models")).json()["models"]}
    assert models[CLS]["sampling"] is None  # a classifier generates nothing
    assert models[LM]["sampling"]["max_tokens"] >= 1


async def test_a_predict_whose_row_fails_drops_its_other_rows(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All or none: a row that fails cancels the others, so a long row's remaining chunks are
    not run for an answer nobody reads (`Engine._prefill_all`)."""
    engine = app_of(client).state.local.engine
    started: list[asyncio.Future[None]] = []
    real = engine.prefill

    async def prefill(m: Any, ids: list[int], states: Any) -> Any:
        if len(ids) == 1:
            raise Overloaded("queue full")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        started.append(waiter)
        await waiter  # a long row still running
        return await real(m, ids, states)

    monkeypatch.setattr(engine, "prefill", prefill)
    r = await client.post(f"/v1/models/{LM}/predict", json={"inputs": ["abcdef", "a"]})
    assert r.status_code == 503
    assert started and started[0].cancelled()
