from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import httpx
import numpy as np
import pytest

from tests.service.conftest import ALL_MODELS, CLS, LM, ClientFactory, FakeClock, new_session

TEXT = {
    "char": "First Citizen:\nBefore we proceed any further, hear me speak.\nAll: Speak, speak.",
    "word": "This movie was not good at all. The acting was awful, but the music was great!",
}


def probs_of(output: dict[str, Any]) -> dict[str, float]:
    if output.get("label") is not None:
        return dict(output["probs"])
    return {n["token"]: n["prob"] for n in output["next"]}


def close(a: dict[str, float], b: dict[str, float], tol: float = 1e-5) -> bool:
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= tol for k in a)


def chunks(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(text)), 7))
    return [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]


async def test_lifecycle(client: httpx.AsyncClient) -> None:
    s = await new_session(client)
    sid = s["session_id"]
    assert s["version"] == 0 and len(sid) >= 32 and s["expires_at"] > s["created_at"]
    assert (await client.get(f"/v1/sessions/{sid}")).json()["version"] == 0
    f = (await client.post(f"/v1/sessions/{sid}/feed", json={"text": "Hello"})).json()
    assert f["version"] == 1 and f["tokens"] == 5 and len(f["output"]["next"]) == 5
    r = (await client.post(f"/v1/sessions/{sid}/reset")).json()
    assert r["version"] == 2 and r["tokens_seen"] == 0
    assert (await client.delete(f"/v1/sessions/{sid}")).status_code == 204
    r2 = await client.get(f"/v1/sessions/{sid}")
    assert r2.status_code == 404 and r2.json()["error"]["code"] == "session_not_found"
    for method, path in [
        ("POST", "feed"),
        ("POST", "reset"),
        ("POST", "generate"),
        ("GET", "state"),
    ]:
        body = {"text": "x"} if path == "feed" else {}
        r3 = await client.request(method, f"/v1/sessions/{sid}/{path}", json=body)
        assert r3.status_code == 404 and r3.json()["error"]["code"] == "session_not_found", path


@pytest.mark.parametrize("model", ALL_MODELS)
async def test_chunked_equals_whole(client: httpx.AsyncClient, model: str) -> None:
    kind = "word" if model in ("tiny-sentiment-gru", "tiny-sentiment-lstm") else "char"
    text = TEXT[kind]
    one = (
        await client.post(f"/v1/models/{model}/predict", json={"inputs": [text], "top_k": 1000})
    ).json()
    whole = probs_of(one["outputs"][0])
    for seed in range(2):
        sid = (await new_session(client, model))["session_id"]
        for i, piece in enumerate(chunks(text, seed)):
            f = (
                await client.post(f"/v1/sessions/{sid}/feed", json={"text": piece, "top_k": 1000})
            ).json()
            so_far = "".join(chunks(text, seed)[: i + 1])
            if kind == "word" and i == 2:  # the running output equals one-shot on the text so far
                ref = (
                    await client.post(f"/v1/models/{model}/predict", json={"inputs": [so_far]})
                ).json()
                assert close(probs_of(f["output"]), probs_of(ref["outputs"][0]))
        assert close(probs_of(f["output"]), whole), model


async def test_generate_continues_and_commits(client: httpx.AsyncClient) -> None:
    sid = (await new_session(client))["session_id"]
    await client.post(f"/v1/sessions/{sid}/feed", json={"text": "ROMEO:"})
    body = {"max_tokens": 15, "seed": 5, "temperature": 1.0}
    g = (await client.post(f"/v1/sessions/{sid}/generate", json=body)).json()
    assert g["version"] == 2 and g["session_id"] == sid and g["usage"]["prompt_tokens"] == 0
    ref = (await client.post(f"/v1/models/{LM}/generate", json={**body, "prompt": "ROMEO:"})).json()
    assert g["text"] == ref["text"]  # same seed, same context -> same text
    # the committed state saw prompt + generated text
    nxt = (await client.post(f"/v1/sessions/{sid}/feed", json={"text": "a", "top_k": 1000})).json()
    one = (
        await client.post(
            f"/v1/models/{LM}/predict", json={"inputs": ["ROMEO:" + g["text"] + "a"], "top_k": 1000}
        )
    ).json()
    assert close(probs_of(nxt["output"]), probs_of(one["outputs"][0]))
    # a prompt on a session is appended to its context
    g2 = (
        await client.post(f"/v1/sessions/{sid}/generate", json={"prompt": "xy", "max_tokens": 3})
    ).json()
    assert g2["usage"]["prompt_tokens"] == 2 and g2["version"] == 4


async def test_session_generate_sse(client: httpx.AsyncClient) -> None:
    sid = (await new_session(client))["session_id"]
    async with client.stream(
        "POST", f"/v1/sessions/{sid}/generate", json={"max_tokens": 5, "stream": True}
    ) as r:
        raw = "".join([c async for c in r.aiter_text()])
    assert (
        raw.count("event: token") == 5 and "event: done" in raw and raw.endswith("data: [DONE]\n\n")
    )
    assert (await client.get(f"/v1/sessions/{sid}")).json()["version"] == 1


async def test_fifty_concurrent_feeds_apply_once_in_order(client: httpx.AsyncClient) -> None:
    sid = (await new_session(client))["session_id"]
    letters = "abcdefghijklmnopqrstuvwxyz"
    pieces = [letters[i % 26] + letters[(i * 7) % 26] for i in range(50)]
    results = await asyncio.gather(
        *(client.post(f"/v1/sessions/{sid}/feed", json={"text": p, "top_k": 1000}) for p in pieces)
    )
    got = sorted((r.json()["version"], p, r.json()) for r, p in zip(results, pieces, strict=True))
    assert [v for v, _, _ in got] == list(range(1, 51))  # each applied exactly once
    assert sorted(p for _, p, _ in got) == sorted(pieces)
    # each feed was applied on top of exactly the feeds with lower versions (serialized, none lost)
    for k in (1, 17, 33, 50):
        text = "".join(p for _, p, _ in got[:k])
        one = (
            await client.post(f"/v1/models/{LM}/predict", json={"inputs": [text], "top_k": 1000})
        ).json()
        assert close(probs_of(got[k - 1][2]["output"]), probs_of(one["outputs"][0]))
    assert (await client.get(f"/v1/sessions/{sid}")).json()["tokens_seen"] == 100


async def test_idempotency_key_replays(client: httpx.AsyncClient) -> None:
    sid = (await new_session(client))["session_id"]
    h = {"Idempotency-Key": "k1"}
    a = await client.post(f"/v1/sessions/{sid}/feed", json={"text": "abc"}, headers=h)
    b = await client.post(f"/v1/sessions/{sid}/feed", json={"text": "abc"}, headers=h)
    assert a.json()["version"] == b.json()["version"] == 1
    assert b.headers["Idempotent-Replayed"] == "true" and b.json()["replayed"]
    assert a.json()["output"] == b.json()["output"]
    assert (await client.get(f"/v1/sessions/{sid}")).json()["tokens_seen"] == 3
    c = await client.post(f"/v1/sessions/{sid}/feed", json={"text": "zzz"}, headers=h)
    assert c.status_code == 422 and c.json()["error"]["code"] == "idempotency_key_reused"
    g = {"Idempotency-Key": "g1"}
    body = {"max_tokens": 6, "expected_version": 1}
    g1 = (await client.post(f"/v1/sessions/{sid}/generate", json=body, headers=g)).json()
    g2 = (await client.post(f"/v1/sessions/{sid}/generate", json=body, headers=g)).json()
    assert g1["text"] == g2["text"] and g1["version"] == g2["version"] == 2 and g2["replayed"]
    r1 = (await client.post(f"/v1/sessions/{sid}/reset", headers={"Idempotency-Key": "r"})).json()
    r2 = (await client.post(f"/v1/sessions/{sid}/reset", headers={"Idempotency-Key": "r"})).json()
    assert r1["version"] == r2["version"] == 3


async def test_expected_version_conflict(client: httpx.AsyncClient) -> None:
    sid = (await new_session(client))["session_id"]
    ok = await client.post(f"/v1/sessions/{sid}/feed", json={"text": "a", "expected_version": 0})
    assert ok.status_code == 200
    for path, body in [
        ("feed", {"text": "b", "expected_version": 0}),
        ("reset", {"expected_version": 5}),
        ("generate", {"expected_version": 0}),
    ]:
        r = await client.post(f"/v1/sessions/{sid}/{path}", json=body)
        assert r.status_code == 409, path
        assert r.json()["error"] == {
            "code": "version_conflict",
            "field": "expected_version",
            "message": f"session {sid!r} is at version 1, not {body['expected_version']}",
        }
    assert (await client.get(f"/v1/sessions/{sid}")).json()["version"] == 1


async def test_ttl_expiry_with_controlled_clock(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    sid = (await new_session(client, ttl_s=10))["session_id"]
    clock.advance(9)
    assert (await client.post(f"/v1/sessions/{sid}/feed", json={"text": "a"})).status_code == 200
    clock.advance(9)  # the feed refreshed the idle TTL
    assert (await client.get(f"/v1/sessions/{sid}")).status_code == 200
    clock.advance(11)
    r = await client.post(f"/v1/sessions/{sid}/feed", json={"text": "a"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "session_expired"
    r = await client.get("/v1/sessions/never-existed")
    assert r.json()["error"]["code"] == "session_not_found"


async def test_session_cap(make_client: ClientFactory) -> None:
    async with make_client(max_sessions=2) as client:
        await new_session(client)
        await new_session(client)
        r = await client.post("/v1/sessions", json={"model": LM})
        assert r.status_code == 429 and r.json()["error"]["code"] == "session_limit"
        assert r.headers["Retry-After"]
    async with make_client(max_sessions=1, session_evict="lru") as client:
        first = (await new_session(client))["session_id"]
        await new_session(client)
        r = await client.get(f"/v1/sessions/{first}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "session_evicted"


async def test_client_chosen_ids(client: httpx.AsyncClient) -> None:
    s = await new_session(client, session_id="user-42:chat")
    assert s["session_id"] == "user-42:chat"
    r = await client.post("/v1/sessions", json={"model": LM, "session_id": "user-42:chat"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "session_exists"


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "code", "field"),
    [
        ("POST", "", {"model": "nope"}, {}, 404, "model_not_found", "model"),
        ("POST", "", {}, {}, 422, "invalid_input", "model"),
        (
            "POST",
            "",
            {"model": LM, "session_id": "bad id!"},
            {},
            422,
            "invalid_input",
            "session_id",
        ),
        ("POST", "", {"model": LM, "ttl_s": -1}, {}, 422, "invalid_input", "ttl_s"),
        ("POST", "", {"model": LM, "ttl_s": 1e9}, {}, 422, "invalid_input", "ttl_s"),
        ("POST", "/{sid}/feed", {"text": ""}, {}, 422, "invalid_input", "text"),
        ("POST", "/{sid}/feed", {}, {}, 422, "invalid_input", "text"),
        ("POST", "/{sid}/feed", {"text": "\u2603"}, {}, 422, "unknown_characters", "text"),
        (
            "POST",
            "/{sid}/feed",
            {"text": "a", "expected_version": -1},
            {},
            422,
            "invalid_input",
            "expected_version",
        ),
        (
            "POST",
            "/{sid}/feed",
            {"text": "a"},
            {"Idempotency-Key": "k" * 300},
            422,
            "invalid_input",
            "Idempotency-Key",
        ),
        ("POST", "/{sid}/generate", {"max_tokens": "many"}, {}, 422, "invalid_input", "max_tokens"),
        (
            "POST",
            "/{sid}/reset",
            {"expected_version": "x"},
            {},
            422,
            "invalid_input",
            "expected_version",
        ),
    ],
)
async def test_session_bad_inputs(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str],
    status: int,
    code: str,
    field: str,
) -> None:
    sid = (await new_session(client))["session_id"]
    r = await client.request(
        method, "/v1/sessions" + path.format(sid=sid), json=body, headers=headers
    )
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["field"] == field
    assert (await client.get(f"/v1/sessions/{sid}")).json()["version"] == 0  # nothing committed


async def test_generate_on_classifier_session_is_400(client: httpx.AsyncClient) -> None:
    sid = (await new_session(client, CLS))["session_id"]
    r = await client.post(f"/v1/sessions/{sid}/generate", json={})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_task"


async def test_word_session_peeks_through_pending_word(client: httpx.AsyncClient) -> None:
    sid = (await new_session(client, CLS))["session_id"]
    f = (await client.post(f"/v1/sessions/{sid}/feed", json={"text": "grea"})).json()
    assert f["tokens"] == 0 and f["pending_chars"] == 4 and f["output"] is not None
    one = (await client.post(f"/v1/models/{CLS}/predict", json={"inputs": ["grea"]})).json()
    assert close(probs_of(f["output"]), probs_of(one["outputs"][0]))
    blank = (await new_session(client, CLS))["session_id"]
    f2 = (await client.post(f"/v1/sessions/{blank}/feed", json={"text": "   "})).json()
    assert f2["output"] is None and f2["version"] == 1


def test_probs_helper() -> None:
    assert close({"a": 0.5}, {"a": 0.5 + 1e-6}) and not close({"a": 0.5}, {"b": 0.5})
    assert np.isclose(1.0, 1.0)


async def test_stream_error_is_an_error_event_then_terminal(
    make_client: ClientFactory, registry: Any
) -> None:
    from service.engine.registry import LoadedModel, Registry
    from tests.service.sessions.conftest import FlakyRunner

    m = registry.models[LM]
    flaky = FlakyRunner(m.runner)
    reg = Registry({LM: LoadedModel(m.manifest, flaky, m.tokenizer, m.path)})  # type: ignore[arg-type]
    async with make_client(reg=reg) as client:
        sid = (await new_session(client))["session_id"]
        flaky.fail_after = flaky.calls + 3
        async with client.stream(
            "POST", f"/v1/sessions/{sid}/generate", json={"max_tokens": 50, "stream": True}
        ) as r:
            raw = "".join([c async for c in r.aiter_text()])
        frames = [f for f in raw.split("\n\n") if f]
        assert frames[-1] == "data: [DONE]" and frames[-2].startswith("event: error")
        err = json.loads(frames[-2].split("data: ", 1)[1])["error"]
        assert err["code"] == "engine_error"
        assert all(f.startswith("event: token") for f in frames[:-2])
        assert (await client.get(f"/v1/sessions/{sid}")).json()["version"] == 0
        flaky.fail_after = None
        r2 = await client.post(f"/v1/models/{LM}/predict", json={"inputs": ["a"]})
        assert r2.status_code == 200  # the engine recovered


async def test_an_unfinished_word_past_its_bound_is_refused_and_changes_nothing(
    client: httpx.AsyncClient,
) -> None:
    sid = (await new_session(client, CLS))["session_id"]
    r = await client.post(f"/v1/sessions/{sid}/feed", json={"text": "fine " + "a" * 4000})
    assert r.status_code == 200 and r.json()["pending_chars"] == 4000
    before = (await client.get(f"/v1/sessions/{sid}")).json()
    r = await client.post(f"/v1/sessions/{sid}/feed", json={"text": "a" * 97})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["field"] == "text" and "4097 characters" in err["message"]
    assert (await client.get(f"/v1/sessions/{sid}")).json() == before
    r = await client.post(f"/v1/sessions/{sid}/feed", json={"text": "a" * 96 + " film"})
    assert r.status_code == 200 and r.json()["pending_chars"] == 4  # "film" (a word may end)


async def test_ttl_is_a_float_whichever_surface_made_the_session(
    client: httpx.AsyncClient,
) -> None:
    v2 = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["ab"]}]}
    v2["parameters"] = {"sequence_id": "ttl-seq", "sequence_start": True}
    assert (await client.post(f"/v2/models/{LM}/infer", json=v2)).status_code == 200
    native = (await new_session(client, LM, ttl_s=600))["session_id"]
    for sid in ("ttl-seq", native):
        body = (await client.get(f"/v1/sessions/{sid}")).text
        assert '"ttl_s":3600.0' in body or '"ttl_s":600.0' in body, body
