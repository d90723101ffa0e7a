"""Through a real uvicorn server: SSE with a streaming HTTP client, WebSockets with the
`websockets` client, and client disconnects mid-generation."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from websockets.asyncio.client import connect

from service.app import create_app
from service.engine.registry import Registry
from service.settings import Settings
from tests.conftest import FIXTURE_MODELS, LONG
from tests.servers import serve_in_thread
from tests.service.api.test_sessions import TEXT, chunks, close, probs_of
from tests.service.conftest import ALL_MODELS, CLASSIFIERS, LM


@pytest.fixture(scope="module")
def live(registry: Registry) -> Iterator[tuple[str, FastAPI]]:
    app = create_app(
        Settings(models_dir=FIXTURE_MODELS, max_wait_ms=1.0, max_tokens_limit=LONG),
        registry=registry,
        configure_logs=False,
    )
    with serve_in_thread(app) as addr:
        yield addr, app


async def _sse(response: httpx.Response) -> list[tuple[str | None, str]]:
    """A minimal SSE parser over the response's lines."""
    events: list[tuple[str | None, str]] = []
    event: str | None = None
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            events.append((event, line[6:]))
        elif line == "":
            event = None
    return events


async def test_sse_over_tcp(live: tuple[str, FastAPI]) -> None:
    addr, _ = live
    async with httpx.AsyncClient(base_url=f"http://{addr}") as c:
        body = {"prompt": "JULIET:", "max_tokens": 12, "seed": 9, "stream": True, "logprobs": 1}
        async with c.stream("POST", f"/v1/models/{LM}/generate", json=body) as r:
            assert r.status_code == 200
            events = await _sse(r)
    assert [e for e, _ in events] == ["token"] * 12 + ["done", None]
    assert events[-1][1] == "[DONE]"
    tokens = [json.loads(d) for e, d in events if e == "token"]
    assert [t["index"] for t in tokens] == list(range(12)) and "logprob" in tokens[0]
    done = json.loads(events[-2][1])
    assert done["finish_reason"] == "length" and done["usage"]["completion_tokens"] == 12
    assert done["text"] == "".join(t["text"] for t in tokens)


async def _session(c: httpx.AsyncClient, model: str = LM) -> str:
    r = await c.post("/v1/sessions", json={"model": model})
    sid: str = r.json()["session_id"]
    return sid


async def _ws(ws: Any, msg: dict[str, Any]) -> list[dict[str, Any]]:
    await ws.send(json.dumps(msg))
    out = []
    while True:
        m = json.loads(await ws.recv())
        out.append(m)
        if m["type"] in ("result", "done", "error"):
            return out


@pytest.mark.parametrize("model", ALL_MODELS)
async def test_websocket_chunked_equals_whole(live: tuple[str, FastAPI], model: str) -> None:
    addr, _ = live
    text = TEXT["word" if model in CLASSIFIERS else "char"]
    async with httpx.AsyncClient(base_url=f"http://{addr}") as c:
        one = (
            await c.post(f"/v1/models/{model}/predict", json={"inputs": [text], "top_k": 1000})
        ).json()
        sid = await _session(c, model)
    async with connect(f"ws://{addr}/v1/sessions/{sid}/ws") as ws:
        for i, piece in enumerate(chunks(text, seed=3)):
            [res] = await _ws(ws, {"type": "feed", "text": piece, "top_k": 1000, "id": i})
            assert res["type"] == "result" and res["id"] == i and res["version"] == i + 1
    assert close(probs_of(res["output"]), probs_of(one["outputs"][0]))


async def test_websocket_generate_reset_and_errors(live: tuple[str, FastAPI]) -> None:
    addr, _ = live
    async with httpx.AsyncClient(base_url=f"http://{addr}") as c:
        sid = await _session(c)
        ref = (
            await c.post(
                f"/v1/models/{LM}/generate", json={"prompt": "Hi", "max_tokens": 10, "seed": 1}
            )
        ).json()
    async with connect(f"ws://{addr}/v1/sessions/{sid}/ws") as ws:
        out = await _ws(ws, {"type": "generate", "prompt": "Hi", "max_tokens": 10, "seed": 1})
        assert [m["type"] for m in out] == ["token"] * 10 + ["done"]
        assert out[-1]["text"] == ref["text"] == "".join(m["text"] for m in out[:-1])
        assert out[-1]["version"] == 1
        [err] = await _ws(ws, {"type": "feed", "text": ""})
        assert err["type"] == "error" and err["error"]["field"] == "text"
        [err] = await _ws(ws, {"type": "feed", "text": "a", "expected_version": 0})
        assert err["error"]["code"] == "version_conflict"
        [err] = await _ws(ws, {"type": "dance"})
        assert err["error"]["code"] == "invalid_input"
        [err] = await _ws(ws, {"type": "generate", "max_tokens": 10**9})
        assert err["error"]["field"] == "max_tokens"
        await ws.send("not json")
        assert json.loads(await ws.recv())["type"] == "error"
        await ws.send(b"\xff\x00 binary")
        assert json.loads(await ws.recv())["type"] == "error"
        [res] = await _ws(ws, {"type": "feed", "text": "a"})  # still serving
        assert res["version"] == 2
        [res] = await _ws(ws, {"type": "reset", "idempotency_key": "r1"})
        assert res["op"] == "reset" and res["version"] == 3 and res["tokens_seen"] == 0
        [res] = await _ws(ws, {"type": "reset", "idempotency_key": "r1"})
        assert res["version"] == 3 and res["replayed"]
    async with connect(f"ws://{addr}/v1/sessions/nope/ws") as ws:
        msg = json.loads(await ws.recv())
        assert msg["type"] == "error" and msg["error"]["code"] == "session_not_found"


async def _wait_idle(app: FastAPI) -> None:
    for _ in range(200):
        if app.state.local.engine.scheduler(LM).active_streams == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the stream's batch slot was not freed")


async def test_sse_disconnect_mid_generation_leaves_state(live: tuple[str, FastAPI]) -> None:
    addr, app = live
    async with httpx.AsyncClient(base_url=f"http://{addr}") as c:
        sid = await _session(c)
        await c.post(f"/v1/sessions/{sid}/feed", json={"text": "ROMEO:"})
        before = (await c.get(f"/v1/sessions/{sid}/state")).json()
        async with c.stream(
            "POST", f"/v1/sessions/{sid}/generate", json={"max_tokens": LONG, "stream": True}
        ) as r:
            n = 0
            async for line in r.aiter_lines():
                n += line.startswith("event: token")
                if n == 3:
                    break  # leaving the block closes the connection mid-stream
        await _wait_idle(app)
        after = (await c.get(f"/v1/sessions/{sid}/state")).json()
        assert after == before  # version and state bytes unchanged
        r2 = await c.post(f"/v1/sessions/{sid}/feed", json={"text": "a"})  # the lock was released
        assert r2.json()["version"] == 2


async def test_json_generate_disconnect_leaves_state(live: tuple[str, FastAPI]) -> None:
    addr, app = live
    async with httpx.AsyncClient(base_url=f"http://{addr}") as c:
        sid = await _session(c)
        before = (await c.get(f"/v1/sessions/{sid}/state")).json()
    async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=0.2) as c2:
        with pytest.raises(httpx.ReadTimeout):
            await c2.post(f"/v1/sessions/{sid}/generate", json={"max_tokens": LONG})
    await _wait_idle(app)
    async with httpx.AsyncClient(base_url=f"http://{addr}") as c:
        assert (await c.get(f"/v1/sessions/{sid}/state")).json() == before


async def test_websocket_disconnect_mid_generation_leaves_state(live: tuple[str, FastAPI]) -> None:
    addr, app = live
    async with httpx.AsyncClient(base_url=f"http://{addr}") as c:
        sid = await _session(c)
        before = (await c.get(f"/v1/sessions/{sid}/state")).json()
        # max_queue None: a client that stops reading (16 queued messages by default) cannot see
        # the server's close frame behind the tokens and would wait out its 10 s close timeout
        async with connect(f"ws://{addr}/v1/sessions/{sid}/ws", max_queue=None) as ws:
            await ws.send(json.dumps({"type": "generate", "max_tokens": LONG}))
            for _ in range(3):
                assert json.loads(await ws.recv())["type"] == "token"
        await _wait_idle(app)
        assert (await c.get(f"/v1/sessions/{sid}/state")).json() == before


async def test_300_concurrent_websocket_generations_match_solo_runs_and_log_nothing(
    live: tuple[str, FastAPI], caplog: pytest.LogCaptureFixture
) -> None:
    """Streams joining the decode batch while it runs (the engine thread ahead of the loop):
    every seeded output equals its solo run, and the server logs no error or traceback."""
    addr, _ = live
    async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=60) as c:
        sids = [
            (await c.post("/v1/sessions", json={"model": LM})).json()["session_id"]
            for _ in range(303)
        ]

    async def generate(sid: str, seed: int) -> str:
        async with connect(f"ws://{addr}/v1/sessions/{sid}/ws", max_queue=None) as ws:
            out = await _ws(
                ws, {"type": "generate", "prompt": "Hi", "max_tokens": 30, "seed": seed}
            )
            assert out[-1]["type"] == "done", out[-1]
            return "".join(m["text"] for m in out[:-1])

    solo = [await generate(sids.pop(), i) for i in range(3)]  # on fresh sessions, like the rest
    caplog.clear()
    with caplog.at_level("WARNING"):
        texts = await asyncio.gather(*(generate(sid, i % 3) for i, sid in enumerate(sids)))
    assert texts == [solo[i % 3] for i in range(300)]
    assert [r.getMessage() for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")] == []


async def test_tiny_temperature_is_greedy_over_sse_and_websocket(live: tuple[str, FastAPI]) -> None:
    addr, _ = live
    body = {"prompt": "Hi", "max_tokens": 20, "seed": 5}
    async with httpx.AsyncClient(base_url=f"http://{addr}") as c:
        greedy = await c.post(f"/v1/models/{LM}/generate", json={**body, "temperature": 0})
        sse_body = {**body, "temperature": 1e-38, "stream": True}
        async with c.stream("POST", f"/v1/models/{LM}/generate", json=sse_body) as r:
            events = await _sse(r)
        sid = (await c.post("/v1/sessions", json={"model": LM})).json()["session_id"]
    text = "".join(json.loads(d)["text"] for e, d in events if e == "token")
    assert text == greedy.json()["text"]
    async with connect(f"ws://{addr}/v1/sessions/{sid}/ws") as ws:
        out = await _ws(ws, {"type": "generate", **body, "temperature": 1e-38})
    assert "".join(m["text"] for m in out[:-1]) == greedy.json()["text"]
