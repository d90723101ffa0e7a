"""A model update with sessions in flight, on a real server process (in one process and with
`--workers 2`), through `tritonclient`'s repository calls: version 2 loads while 100 sessions feed
and 20 streams generate on version 1, nothing fails, and every old session's numbers are those of
a run that never saw version 2."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
import tritonclient.http as tc
import tritonclient.http.aio as tca
from tritonclient.utils import InferenceServerException

from tests.conftest import FIXTURE_MODELS
from tests.servers import start, stop
from tests.service.conftest import CLS
from tests.service.engine.repo_layout import NAME, add_version

SESSIONS, STREAMS, CHUNKS, TOKENS = 100, 20, 6, 120
TEXT = "to be, or not to be, that is the question: "


def _chunks(i: int) -> list[str]:
    words = (TEXT * 2).split(" ")
    return [" ".join(words[(i + k) % 9 : (i + k) % 9 + 2]) + " " for k in range(CHUNKS)]


async def _feed_all(
    c: httpx.AsyncClient, sid: str, chunks: list[str], fed: asyncio.Event
) -> list[dict[str, Any]]:
    outs: list[dict[str, Any]] = []
    for n, chunk in enumerate(chunks):
        r = await c.post(f"/v1/sessions/{sid}/feed", json={"text": chunk, "top_k": 5})
        assert r.status_code == 200, r.text
        outs.append(r.json()["output"])
        if n == 0:
            fed.set()
        await asyncio.sleep(0)  # interleave with the others
    return outs


async def _stream(c: httpx.AsyncClient, sid: str, seed: int, started: asyncio.Event) -> str:
    body = {"max_tokens": TOKENS, "seed": seed, "stream": True, "temperature": 1.0}
    text: list[str] = []
    events: list[str] = []
    async with c.stream("POST", f"/v1/sessions/{sid}/generate", json=body) as r:
        assert r.status_code == 200, await r.aread()
        event = None
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
                events.append(event)
            elif line.startswith("data: ") and event == "token":
                text.append(json.loads(line[6:])["text"])
                started.set()
    assert events[-1] == "done", events[-3:]
    return "".join(text)


async def _predicting(c: httpx.AsyncClient, done: asyncio.Event) -> int:
    """Stateless predictions on the model's default version, whichever it is, until `done`."""
    n = 0
    while not done.is_set():
        r = await c.post(f"/v1/models/{NAME}/predict", json={"inputs": ["to be"]})
        assert r.status_code == 200, r.text
        n += 1
    return n


async def _new(c: httpx.AsyncClient, model: str) -> str:
    r = await c.post("/v1/sessions", json={"model": model})
    assert r.status_code == 201, r.text
    sid: str = r.json()["session_id"]
    return sid


@pytest.mark.parametrize("workers", [0, 2])
def test_a_new_version_loads_under_load_and_the_old_sessions_are_exact(
    tmp_path: Path, workers: int
) -> None:
    root = tmp_path / "models"
    add_version(root, "1", "lstm")
    shutil.copytree(FIXTURE_MODELS / CLS, root / CLS)  # a model unloaded and loaded meanwhile
    server = start(tmp_path, workers=workers, models_dir=str(root), max_open_streams="64")
    triton = tc.InferenceServerClient(server.addr)
    try:
        index = triton.get_model_repository_index()
        assert [(e["name"], e["version"], e["state"]) for e in index] == [
            (NAME, "1", "READY"),
            (CLS, "1", "READY"),
        ]
        add_version(root, "2", "gru")

        Feeds = list[list[dict[str, Any]]]

        async def run() -> tuple[Feeds, list[str], Feeds, list[str]]:
            limits = httpx.Limits(max_connections=SESSIONS + STREAMS)
            async with httpx.AsyncClient(base_url=server.base, timeout=60, limits=limits) as c:
                feeders = [await _new(c, NAME) for _ in range(SESSIONS)]
                writers = [await _new(c, NAME) for _ in range(STREAMS)]
                fed = [asyncio.Event() for _ in feeders]
                started = [asyncio.Event() for _ in writers]
                feeds = [
                    asyncio.create_task(_feed_all(c, sid, _chunks(i), fed[i]))
                    for i, sid in enumerate(feeders)
                ]
                streams = [
                    asyncio.create_task(_stream(c, sid, 1000 + i, started[i]))
                    for i, sid in enumerate(writers)
                ]
                done = asyncio.Event()
                predicts = asyncio.create_task(_predicting(c, done))
                # every session and stream is under way on version 1: load version 2, and
                # unload and load another model meanwhile
                await asyncio.gather(*(e.wait() for e in fed + started))
                aio = tca.InferenceServerClient(server.addr)
                try:
                    await aio.load_model(NAME)
                    await aio.unload_model(CLS)
                    await aio.load_model(CLS)
                finally:
                    await aio.close()
                got_feeds = await asyncio.gather(*feeds)
                got_streams = await asyncio.gather(*streams)
                done.set()
                assert await predicts > 0  # (each one answered 200)
                # every API worker has the new catalog (a fresh connection each: any worker)
                for _ in range(8):
                    async with httpx.AsyncClient(base_url=server.base) as fresh:
                        r = await fresh.get(f"/v1/models/{NAME}")
                        assert r.json()["versions"] == ["1", "2"], r.text
                info = (await c.get(f"/v1/models/{NAME}")).json()
                assert (info["version"], info["versions"]) == ("2", ["1", "2"])
                # the same work on a server that never saw version 2: sessions named onto
                # version 1, run after the reload, one at a time
                ref_feeds: Feeds = []
                ref_streams: list[str] = []
                for i in range(SESSIONS):
                    sid = await _new(c, f"{NAME}@1")
                    ref_feeds.append(await _feed_all(c, sid, _chunks(i), asyncio.Event()))
                for i in range(STREAMS):
                    sid = await _new(c, f"{NAME}@1")
                    ref_streams.append(await _stream(c, sid, 1000 + i, asyncio.Event()))
                return got_feeds, got_streams, ref_feeds, ref_streams

        got_feeds, got_streams, ref_feeds, ref_streams = asyncio.run(run())
        _close(got_feeds, ref_feeds)
        assert got_streams == ref_streams and all(len(t) == TOKENS for t in got_streams)
        states = {
            (e["name"], e["version"], e["state"]) for e in triton.get_model_repository_index()
        }
        assert states == {(NAME, "1", "READY"), (NAME, "2", "READY"), (CLS, "1", "READY")}

        # unloading version 1 with its sessions live: it drains (no session is failed)
        triton.unload_model(NAME, query_params=None)  # every version: the model goes
        entries = {
            e["version"]: e for e in triton.get_model_repository_index() if e["name"] == NAME
        }
        assert entries["1"]["state"] == "DRAINING"  # (2, with no session, may be gone already)
        assert "serving its live sessions" in entries["1"]["reason"]
        with pytest.raises(InferenceServerException, match="no model named"):
            triton.get_model_metadata(NAME)
        with pytest.raises(InferenceServerException, match="sha256"):
            (root / NAME / "2" / "model.onnx").write_bytes(b"broken")
            triton.load_model(NAME)
    finally:
        triton.close()
        stop(server)


def _close(got: list[list[dict[str, Any]]], want: list[list[dict[str, Any]]]) -> None:
    """The same next tokens with the same probabilities (to 1e-5: a feed's batch differs)."""
    for g_session, w_session in zip(got, want, strict=True):
        for g, w in zip(g_session, w_session, strict=True):
            assert [p["token"] for p in g["next"]] == [p["token"] for p in w["next"]]
            for gp, wp in zip(g["next"], w["next"], strict=True):
                assert abs(gp["prob"] - wp["prob"]) <= 1e-5
