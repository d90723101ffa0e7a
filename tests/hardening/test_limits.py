"""Limits and back-pressure: body size, request timeout, stalled readers, per-key caps."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.engine.registry import Registry, load_registry
from tests.conftest import FIXTURE_MODELS, LONG
from tests.hardening.asgi import HeldClient
from tests.hardening.conftest import KEY_A, KEY_B, KEYS, auth, wrapped
from tests.service.conftest import CLS, LM, ClientFactory, app_of, no_streams_left


async def test_body_size_limit_is_413_in_each_surface_shape(make_client: ClientFactory) -> None:
    big = "a" * 3000
    async with make_client(max_body_bytes=2048) as c:
        r = await c.post(f"/v1/models/{LM}/predict", json={"inputs": [big]})
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
        r = await c.post(f"/v2/models/{LM}/infer", content=big.encode())
        assert r.status_code == 413 and isinstance(r.json()["error"], str)
        r = await c.post("/openai/v1/completions", json={"model": LM, "prompt": big})
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as read
            yield b'{"inputs": ["'
            for _ in range(10):
                yield b"a" * 500
            yield b'"]}'

        json_type = {"Content-Type": "application/json"}
        r = await c.post(f"/v1/models/{LM}/predict", content=chunks(), headers=json_type)
        assert r.status_code == 413, r.text
        r = await c.post(f"/v1/models/{LM}/predict", json={"inputs": ["ab"]})
        assert r.status_code == 200


async def test_slow_request_times_out_with_504_and_commits_nothing(
    make_client: ClientFactory, registry: Registry
) -> None:
    reg, runners = wrapped(registry, LM)
    async with make_client(reg, request_timeout_s=0.3) as c:
        sid = (await c.post("/v1/sessions", json={"model": LM})).json()["session_id"]
        runners[LM].delay_s = 0.6
        t0 = time.monotonic()
        r = await c.post(f"/v1/sessions/{sid}/feed", json={"text": "abc"})
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        assert r.headers["retry-after"] == "1"
        assert time.monotonic() - t0 < 0.55
        runners[LM].delay_s = 0.0
        await asyncio.sleep(0.4)  # the abandoned batch finishes in its thread
        info = (await c.get(f"/v1/sessions/{sid}")).json()
        assert info["version"] == 0 and info["tokens_seen"] == 0
        assert (await c.post(f"/v1/sessions/{sid}/feed", json={"text": "a"})).json()["version"] == 1


@pytest.mark.parametrize("stream", [True, False])
async def test_stalled_reader_is_dropped_and_frees_everything(
    make_client: ClientFactory, stream: bool
) -> None:
    async with make_client(send_timeout_s=0.2, max_tokens_limit=LONG) as c:
        app = app_of(c)
        sid = (await c.post("/v1/sessions", json={"model": LM})).json()["session_id"]
        await c.post(f"/v1/sessions/{sid}/feed", json={"text": "ab"})
        before = (await c.get(f"/v1/sessions/{sid}/state")).json()
        # takes the response head (and 2 frames when streaming), then stops reading for good
        held = HeldClient(hold_after=3 if stream else 0)
        body = {"max_tokens": LONG, "stream": stream, "seed": 1}
        if not stream:  # the JSON answer is one message: stall on it
            body["max_tokens"] = 5
        t0 = time.monotonic()
        await asyncio.wait_for(
            held.call(app, "POST", f"/v1/sessions/{sid}/generate", body), timeout=10
        )
        assert time.monotonic() - t0 < 5
        sched = app.state.local.engine.scheduler(LM)
        for _ in range(50):
            if sched.active_streams == 0:
                break
            await asyncio.sleep(0.02)
        assert sched.active_streams == 0  # the decode slot is free
        # the lock is free and nothing was committed by the dropped stream
        after = (await c.get(f"/v1/sessions/{sid}/state")).json()
        if stream:
            assert after == before
        r = await asyncio.wait_for(c.post(f"/v1/sessions/{sid}/feed", json={"text": "c"}), 5)
        assert r.status_code == 200


async def test_per_key_stream_cap(make_client: ClientFactory) -> None:
    async with make_client(api_keys=KEYS, max_streams_per_key=1, send_timeout_s=30) as c:
        app = app_of(c)
        held = HeldClient(hold_after=2)
        body = {"max_tokens": 50, "stream": True}
        first = asyncio.create_task(
            held.call(app, "POST", f"/v1/models/{LM}/generate", body, auth(KEY_A))
        )
        await asyncio.wait_for(held.held.wait(), 5)
        r = await c.post(f"/v1/models/{LM}/generate", json=body, headers=auth(KEY_A))
        assert r.status_code == 429 and r.json()["error"]["code"] == "stream_limit"
        assert r.headers["retry-after"] == "1"
        r = await c.post(
            "/openai/v1/completions", json={"model": LM, "prompt": "a"}, headers=auth(KEY_A)
        )
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
        r = await c.post(f"/v1/models/{LM}/generate", json=body, headers=auth(KEY_B))
        assert r.status_code == 200  # another key is not affected
        r = await c.post(f"/v1/models/{CLS}/predict", json={"inputs": ["a"]}, headers=auth(KEY_A))
        assert r.status_code == 200  # predictions are not streams
        held.release.set()
        await asyncio.wait_for(first, 10)
        r = await c.post(f"/v1/models/{LM}/generate", json=body, headers=auth(KEY_A))
        assert r.status_code == 200


async def test_per_key_session_cap(make_client: ClientFactory) -> None:
    async with make_client(api_keys=KEYS, max_sessions_per_key=2) as c:
        a, b = auth(KEY_A), auth(KEY_B)
        ids = [
            (await c.post("/v1/sessions", json={"model": LM}, headers=a)).json() for _ in range(2)
        ]
        r = await c.post("/v1/sessions", json={"model": LM}, headers=a)
        assert r.status_code == 429 and r.json()["error"]["code"] == "session_limit"
        assert "retry-after" in r.headers
        infer = {
            "inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", "data": ["a"]}],
            "parameters": {"sequence_id": 77, "sequence_start": True},
        }
        r = await c.post(f"/v2/models/{LM}/infer", json=infer, headers=a)
        assert r.status_code == 429, r.text  # a v2 sequence is a session too
        assert (await c.post("/v1/sessions", json={"model": LM}, headers=b)).status_code == 201
        await c.delete(f"/v1/sessions/{ids[0]['session_id']}", headers=a)
        assert (await c.post("/v1/sessions", json={"model": LM}, headers=a)).status_code == 201


@pytest.mark.redis
async def test_per_key_session_cap_with_redis_across_replicas(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """Two app instances ("replicas") sharing one Redis hold a key to one cap between them,
    refuse with exactly the memory store's answer, and free a slot on delete and on expiry."""
    from tests.service.redis_server import REDIS_SERVER, RedisProcess

    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is not installed")
    async with make_client(api_keys=KEYS, max_sessions_per_key=1) as mem:
        await mem.post("/v1/sessions", json={"model": LM}, headers=auth(KEY_A))
        refused_by_memory = await mem.post("/v1/sessions", json={"model": LM}, headers=auth(KEY_A))
    assert refused_by_memory.status_code == 429
    server = RedisProcess(tmp_path)
    server.start()
    try:
        cfg: dict[str, Any] = {
            "api_keys": KEYS,
            "max_sessions_per_key": 2,
            "store": "redis",
            "redis_url": server.url,
        }
        async with make_client(**cfg) as r1, make_client(**cfg) as r2:
            a, b = auth(KEY_A), auth(KEY_B)
            created = await asyncio.gather(  # racing through both replicas
                *(
                    (r1 if i % 2 else r2).post("/v1/sessions", json={"model": LM}, headers=b)
                    for i in range(6)
                )
            )
            assert sorted(r.status_code for r in created) == [201, 201, 429, 429, 429, 429]
            keep = (await r1.post("/v1/sessions", json={"model": LM}, headers=a)).json()
            short = await r2.post("/v1/sessions", json={"model": LM, "ttl_s": 1.0}, headers=a)
            assert short.status_code == 201
            for c in (r1, r2):
                r = await c.post("/v1/sessions", json={"model": LM}, headers=a)
                assert r.status_code == 429 and "retry-after" in r.headers
                body = r.json()
                assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
                assert body["error"]["code"] == "session_limit"
                # the memory store's answer, word for word (its cap was 1, this one is 2)
                assert (
                    body["error"]["message"].replace(" 2 ", " 1 ")
                    == (refused_by_memory.json()["error"]["message"])
                )
            infer = {
                "inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", "data": ["a"]}],
                "parameters": {"sequence_id": 77, "sequence_start": True},
            }
            r = await r2.post(f"/v2/models/{LM}/infer", json=infer, headers=a)
            assert r.status_code == 429, r.text  # a v2 sequence is a session too
            # delete on one replica frees the slot for the other
            r = await r2.delete(f"/v1/sessions/{keep['session_id']}", headers=a)
            assert r.status_code == 204, r.text
            assert (await r1.post("/v1/sessions", json={"model": LM}, headers=a)).status_code == 201
            assert (await r2.post("/v1/sessions", json={"model": LM}, headers=a)).status_code == 429
            # expiry frees one too
            await asyncio.sleep(1.3)
            assert (await r2.post("/v1/sessions", json={"model": LM}, headers=a)).status_code == 201
            r = await r1.post(f"/v2/models/{LM}/infer", json=infer, headers=b)
            assert r.status_code == 429  # the other key is still at its own cap
    finally:
        server.stop()


@pytest.fixture(scope="module")
def bidirectional(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    import shutil

    root: Path = tmp_path_factory.mktemp("bidi")
    shutil.copytree(FIXTURE_MODELS / CLS, root / CLS)
    man = json.loads((root / CLS / "manifest.json").read_text())
    man["streamable"] = False
    (root / CLS / "manifest.json").write_text(json.dumps(man))
    reg = load_registry(root)
    assert not reg.failed, reg.failed
    return reg


async def test_unstreamable_model_refuses_sessions_but_predicts(
    make_client: ClientFactory, bidirectional: Registry
) -> None:
    async with make_client(bidirectional) as c:
        r = await c.post("/v1/sessions", json={"model": CLS})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == "not_streamable" and err["field"] == "model"
        assert "predict" in err["message"]
        infer: dict[str, Any] = {
            "inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", "data": ["good"]}],
            "parameters": {"sequence_id": 5, "sequence_start": True},
        }
        r = await c.post(f"/v2/models/{CLS}/infer", json=infer)
        assert r.status_code == 400 and "not streamable" in r.json()["error"]
        r = await c.post(f"/v1/models/{CLS}/predict", json={"inputs": ["a good film"]})
        assert r.status_code == 200
        del infer["parameters"]
        assert (await c.post(f"/v2/models/{CLS}/infer", json=infer)).status_code == 200


async def test_stalled_websocket_is_dropped_and_frees_everything(
    make_client: ClientFactory,
) -> None:
    from tests.hardening.asgi import HeldWebSocket

    async with make_client(send_timeout_s=0.2) as c:
        app = app_of(c)
        sid = (await c.post("/v1/sessions", json={"model": LM})).json()["session_id"]
        await c.post(f"/v1/sessions/{sid}/feed", json={"text": "ab"})
        before = (await c.get(f"/v1/sessions/{sid}/state")).json()
        ws = HeldWebSocket(hold_after=4)  # accept + a few tokens, then the reader stalls
        ws.send_json({"type": "generate", "max_tokens": 4000, "seed": 3})
        t0 = time.monotonic()
        await asyncio.wait_for(ws.call(app, f"/v1/sessions/{sid}/ws"), timeout=10)
        assert ws.held.is_set() and time.monotonic() - t0 < 5
        await no_streams_left(app, within_s=1.0)
        assert (await c.get(f"/v1/sessions/{sid}/state")).json() == before
        r = await asyncio.wait_for(c.post(f"/v1/sessions/{sid}/feed", json={"text": "c"}), 5)
        assert r.status_code == 200


async def test_full_queue_is_503_with_retry_after_never_a_hang(
    make_client: ClientFactory, registry: Registry
) -> None:
    reg, runners = wrapped(registry, CLS)
    async with make_client(reg, max_queue=2, max_batch_size=1) as c:
        runners[CLS].delay_s = 0.05
        body = {"inputs": ["a fine film"]}
        rs = await asyncio.wait_for(
            asyncio.gather(*(c.post(f"/v1/models/{CLS}/predict", json=body) for _ in range(12))),
            20,
        )
        codes = sorted(r.status_code for r in rs)
        assert set(codes) == {200, 503}, codes
        for r in rs:
            if r.status_code == 503:
                assert r.json()["error"]["code"] == "overloaded"
                assert r.headers["retry-after"] == "1"
        runners[CLS].delay_s = 0.0
        assert (await c.post(f"/v1/models/{CLS}/predict", json=body)).status_code == 200


async def test_quotes_and_colons_inside_a_text_are_not_object_keys(
    client: httpx.AsyncClient,
) -> None:
    text = '{"k": 1, ' * 11_000  # 99k characters, 11,000 escaped `\":` in the body
    r = await client.post(f"/v1/models/{CLS}/predict", json={"inputs": [text]})
    assert r.status_code == 200, r.text
    keys = "{" + ", ".join(f'"k{i}": 1' for i in range(11_000)) + "}"
    r = await client.post(
        f"/v1/models/{CLS}/predict", content=keys, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400 and "JSON object keys" in r.text
