"""Versions across replicas that share a Redis session store: a replica serves a session on any
version it has loaded, says clearly which graph it lacks otherwise (409 `model_changed`, never a
session fed on another graph), and an unload on one replica drains the sessions the store holds
on that graph, whichever replica made them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from service.engine.registry import load_registry
from tests.loopback import RedisProcess
from tests.service.conftest import ClientFactory
from tests.service.engine.repo_layout import NAME, add_version
from tests.service.redis_server import redis_server

__all__ = ["redis_server"]  # the fixture, used by name
pytestmark = pytest.mark.redis


async def test_replicas_with_different_versions_share_sessions_by_graph(
    make_client: ClientFactory, tmp_path: Path, redis_server: RedisProcess
) -> None:
    old_and_new, new_only = tmp_path / "a", tmp_path / "b"
    add_version(old_and_new, "1", "lstm")
    add_version(old_and_new, "2", "gru")
    add_version(new_only, "2", "gru")
    store = {"store": "redis", "redis_url": redis_server.url}
    async with (
        make_client(load_registry(old_and_new), models_dir=old_and_new, **store) as a,
        make_client(load_registry(new_only), models_dir=new_only, **store) as b,
    ):
        on_1 = (await a.post("/v1/sessions", json={"model": f"{NAME}@1"})).json()["session_id"]
        on_2 = (await b.post("/v1/sessions", json={"model": NAME})).json()["session_id"]
        for c in (a, b):  # version 2 is on both: either replica feeds its session
            r = await c.post(f"/v1/sessions/{on_2}/feed", json={"text": "ab"})
            assert r.status_code == 200, r.text
        assert (await a.post(f"/v1/sessions/{on_1}/feed", json={"text": "ab"})).is_success
        lacking = await b.post(f"/v1/sessions/{on_1}/feed", json={"text": "cd"})
        assert lacking.status_code == 409, lacking.text
        err = lacking.json()["error"]
        assert err["code"] == "model_changed" and "is not served here" in err["message"]
        assert (await a.get(f"/v1/sessions/{on_1}")).json()["tokens_seen"] == 2  # untouched

        # an unload on `a` drains what the store holds on version 1, whoever made it
        r = await a.post(f"/v1/repository/models/{NAME}/unload", json={"version": "1"})
        assert r.json()["models"][0]["sessions"] == 1
        assert (await a.post(f"/v1/sessions/{on_1}/feed", json={"text": "cd"})).is_success
        assert (await b.delete(f"/v1/sessions/{on_1}")).status_code == 204
        deadline = time.monotonic() + 10
        while True:
            index = (await a.get("/v1/repository")).json()["models"]
            if {e["version"]: e["state"] for e in index}["1"] == "UNAVAILABLE":
                break
            assert time.monotonic() < deadline, index
            await asyncio.sleep(0.05)
