"""The model repository at run time (`engine/repository.py`), through the HTTP API of a real app
whose engine is in this process or behind the ZeroMQ wire: versions load beside what serves,
sessions stay on the graph that made their state, unloads drain, a bad load changes nothing, and
only an admin key may do any of it."""

from __future__ import annotations

import asyncio
import time
import weakref
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.engine.registry import load_registry
from tests.service.conftest import ClientFactory, app_of
from tests.service.engine.repo_layout import NAME, add_version, write_settings

pytestmark = pytest.mark.parametrize("transport", ["inprocess", "zmq"])


def _layout(root: Path, *graphs: str) -> Path:
    for n, graph in enumerate(graphs, 1):
        add_version(root, str(n), graph)
    return root


async def _feed(c: httpx.AsyncClient, sid: str, text: str) -> dict[str, Any]:
    r = await c.post(f"/v1/sessions/{sid}/feed", json={"text": text, "top_k": 3})
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


async def _session(c: httpx.AsyncClient, model: str = NAME) -> str:
    r = await c.post("/v1/sessions", json={"model": model})
    assert r.status_code == 201, r.text
    sid: str = r.json()["session_id"]
    return sid


async def _index(c: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    r = await c.get("/v1/repository")
    assert r.status_code == 200, r.text
    return {f"{e['name']}@{e['version']}": e for e in r.json()["models"]}


async def _until_state(c: httpx.AsyncClient, key: str, state: str, within_s: float = 10) -> None:
    deadline = time.monotonic() + within_s
    while (await _index(c))[key]["state"] != state:
        assert time.monotonic() < deadline, await _index(c)
        await asyncio.sleep(0.02)


def _client(make_client: ClientFactory, root: Path, transport: str, **kw: Any) -> Any:
    return make_client(load_registry(root), models_dir=root, engine_transport=transport, **kw)


async def test_a_new_version_takes_new_sessions_while_the_old_ones_stay_on_theirs(
    make_client: ClientFactory, tmp_path: Path, transport: str
) -> None:
    root = _layout(tmp_path, "lstm")
    async with _client(make_client, root, transport) as c:
        old = await _session(c)
        first = await _feed(c, old, "to be")
        add_version(root, "2", "gru")  # the new version lands in the folder: nothing changes yet
        assert (await _index(c))[f"{NAME}@2"]["state"] == "UNAVAILABLE"
        r = await c.post(f"/v1/repository/models/{NAME}/load", json={})
        assert r.status_code == 200, r.text
        assert {(e["version"], e["state"], e["default"]) for e in r.json()["models"]} == {
            ("1", "READY", False),
            ("2", "READY", True),
        }
        info = (await c.get(f"/v1/models/{NAME}")).json()
        assert (info["version"], info["versions"]) == ("2", ["1", "2"])

        # the old session goes on exactly as on a server that never saw version 2 ...
        cont = await _feed(c, old, " or not")
        ref = await _session(c, f"{NAME}@1")
        assert (await _feed(c, ref, "to be")) == {**first, "session_id": ref}
        assert (await _feed(c, ref, " or not")) == {**cont, "session_id": ref}
        # ... and a new one starts on version 2 (another graph: other numbers)
        new = await _session(c)
        assert (await _feed(c, new, "to be"))["output"] != first["output"]
        # requests may name a version on every surface
        a = await c.post(f"/v1/models/{NAME}@1/predict", json={"inputs": ["to be"], "top_k": 3})
        b = await c.post(f"/v1/models/{NAME}/predict", json={"inputs": ["to be"], "top_k": 3})
        assert a.status_code == b.status_code == 200
        assert a.json()["outputs"][0] == first["output"] != b.json()["outputs"][0]
        v2 = await c.post(
            f"/v2/models/{NAME}/versions/1/infer",
            json={"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["a"]}]},
        )
        assert v2.status_code == 200 and v2.json()["model_version"] == "1"
        texts = {}
        for model in (f"{NAME}@1", NAME):
            body = {"prompt": "to be", "max_tokens": 12, "temperature": 0}
            oa = await c.post("/openai/v1/completions", json={**body, "model": model})
            native = await c.post(f"/v1/models/{model}/generate", json=body)
            assert oa.status_code == native.status_code == 200, oa.text
            texts[model] = oa.json()["choices"][0]["text"]
            assert texts[model] == native.json()["text"]  # the same version on both surfaces
        assert texts[f"{NAME}@1"] != texts[NAME]
        missing = await c.post(f"/v1/models/{NAME}@7/predict", json={"inputs": ["a"]})
        assert missing.status_code == 404 and "no version '7'" in missing.text


async def test_an_unload_drains_the_sessions_then_ends_them_naming_the_version(
    make_client: ClientFactory, tmp_path: Path, transport: str
) -> None:
    root = _layout(tmp_path, "lstm", "gru")
    async with _client(make_client, root, transport) as c:
        assert {k: e["state"] for k, e in (await _index(c)).items()} == {
            f"{NAME}@1": "READY",
            f"{NAME}@2": "READY",
        }
        pinned = await _session(c, f"{NAME}@1")
        await _feed(c, pinned, "ab")
        graph = weakref.ref(app_of(c).state.local.engine.model(f"{NAME}@1").runner.session)
        left = await _session(c, f"{NAME}@1")
        r = await c.post(f"/v1/repository/models/{NAME}/unload", json={"version": "1"})
        assert r.status_code == 200, r.text
        assert r.json()["models"][0]["state"] == "DRAINING"
        assert r.json()["models"][0]["sessions"] == 2
        # draining: no new work on it, its sessions still served
        refused = await c.post("/v1/sessions", json={"model": f"{NAME}@1"})
        assert refused.status_code == 404 and "being unloaded" in refused.text
        await _feed(c, pinned, "cd")
        await c.delete(f"/v1/sessions/{pinned}")
        await c.delete(f"/v1/sessions/{left}")
        await _until_state(c, f"{NAME}@1", "UNAVAILABLE")  # no session left: it went
        assert (await _index(c))[f"{NAME}@1"]["reason"] == "unloaded"
        assert graph() is None  # its onnxruntime session is freed (its memory: docs/api.md)

        # a drain that runs out ends the sessions still on the version, with an error naming it
        r = await c.post(f"/v1/repository/models/{NAME}/load", json={"version": "1"})
        assert r.status_code == 200, r.text
        stuck = await _session(c, f"{NAME}@1")
        r = await c.post(
            f"/v1/repository/models/{NAME}/unload", json={"version": "1", "drain_s": 0}
        )
        assert r.status_code == 200, r.text
        await _until_state(c, f"{NAME}@1", "UNAVAILABLE")
        gone = await c.post(f"/v1/sessions/{stuck}/feed", json={"text": "x"})
        assert gone.status_code == 409, gone.text
        assert gone.json()["error"]["code"] == "model_unloaded"
        assert f"{NAME}@1" in gone.json()["error"]["message"]
        # the version still serving never stopped, and its engine thread is the only one left
        assert (await c.post(f"/v1/models/{NAME}/predict", json={"inputs": ["a"]})).is_success
        threads = app_of(c).state.local.engine.schedulers
        assert [k.partition("#")[0] for k in threads] == [f"{NAME}@2"]


async def test_a_bad_version_is_refused_and_what_served_still_serves(
    make_client: ClientFactory, tmp_path: Path, transport: str
) -> None:
    root = _layout(tmp_path, "lstm")
    async with _client(make_client, root, transport) as c:
        before = await c.post(f"/v1/models/{NAME}/predict", json={"inputs": ["ab"]})
        broken = add_version(root, "2", "gru")
        (broken / "model.onnx").write_bytes(b"not a graph")
        r = await c.post(f"/v1/repository/models/{NAME}/load", json={})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == "model_load_failed" and f"{NAME}@2" in err["message"]
        assert "sha256" in err["message"]
        entry = (await _index(c))[f"{NAME}@2"]
        assert entry["state"] == "UNAVAILABLE" and "sha256" in entry["reason"]
        after = await c.post(f"/v1/models/{NAME}/predict", json={"inputs": ["ab"]})
        assert after.json() == before.json()
        assert (await c.get(f"/v1/models/{NAME}")).json()["versions"] == ["1"]
        # so is a load whose settings are wrong, naming the field
        bad = await c.post(
            f"/v1/repository/models/{NAME}/load", json={"settings": {"max_batch_size": 0}}
        )
        assert bad.status_code == 422, bad.text
        assert "max_batch_size" in bad.json()["error"]["message"]


async def test_a_model_loaded_with_its_own_settings_shows_them(
    make_client: ClientFactory, tmp_path: Path, transport: str
) -> None:
    root = _layout(tmp_path, "lstm")
    async with _client(make_client, root, transport, max_batch_size=64) as c:
        r = await c.post(
            f"/v1/repository/models/{NAME}/load",
            json={"settings": {"max_batch_size": 8, "max_wait_ms": 0.5}},
        )
        assert r.status_code == 200, r.text
        shown = (await c.get("/v1/models")).json()["models"][0]["settings"]
        assert (shown["max_batch_size"], shown["max_wait_ms"]) == (8, 0.5)
        config = (await c.get(f"/v2/models/{NAME}/config")).json()
        assert config["max_batch_size"] == 8
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 500
        sched = app_of(c).state.local.engine.scheduler(NAME)
        assert (sched.config.max_batch_size, sched.config.max_wait_ms) == (8, 0.5)


async def test_only_an_admin_key_may_load_or_unload(
    make_client: ClientFactory, tmp_path: Path, transport: str
) -> None:
    root = _layout(tmp_path, "lstm")
    keys = "ops:admin-key-0123456789,app:user-key-0123456789"
    async with _client(make_client, root, transport, api_keys=keys, admin_keys="ops") as c:
        user = {"Authorization": "Bearer user-key-0123456789"}
        admin = {"Authorization": "Bearer admin-key-0123456789"}
        for path in (f"/v1/repository/models/{NAME}/unload", "/v2/repository/index"):
            r = await c.post(path, headers=user, json={})
            assert r.status_code == 403, r.text
            assert "'app' may not load or unload" in r.text
        assert (await c.post("/v2/repository/index", json={})).status_code == 401
        r = await c.post("/v2/repository/index", headers=admin, json={})
        assert r.status_code == 200 and r.json()[0]["state"] == "READY"
    async with _client(make_client, root, transport, model_control=False) as c:
        r = await c.post(f"/v1/repository/models/{NAME}/load", json={})
        assert r.status_code == 403 and r.json()["error"]["code"] == "model_control_off"


async def test_a_loads_policy_a_broken_settings_file_and_a_drain_are_answered_as_they_should(
    make_client: ClientFactory, tmp_path: Path, transport: str
) -> None:
    root = _layout(tmp_path, "lstm", "gru")
    async with _client(make_client, root, transport) as c:
        # a load's own version policy: only the newest now (the other drains)
        r = await c.post(
            f"/v1/repository/models/{NAME}/load",
            json={"settings": {"version_policy": {"latest": 1}}},
        )
        assert r.status_code == 200, r.text
        assert {e["version"]: e["state"] for e in r.json()["models"]} == {
            "1": "DRAINING",
            "2": "READY",
        }
        # a v2 sequence on the draining version goes on, named by its version or not
        seq = {"sequence_id": "s-1", "sequence_start": True}
        body = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}
        r = await c.post(f"/v2/models/{NAME}/versions/2/infer", json={**body, "parameters": seq})
        assert r.status_code == 200, r.text
        await c.post(f"/v1/repository/models/{NAME}/load", json={"version": "1"})
        pinned = await _session(c, f"{NAME}@1")
        await c.post(f"/v1/repository/models/{NAME}/unload", json={"version": "1"})
        for path in (f"/v2/models/{NAME}/versions/1/infer", f"/v2/models/{NAME}/infer"):
            step = {**body, "parameters": {"sequence_id": pinned}}
            r = await c.post(path, json=step)
            assert r.status_code == 200, (path, r.text)
            assert r.json()["model_version"] == "1"  # what ran, whatever the default is
        # a reset moves a session off the draining version, onto the default one
        r = await c.post(f"/v1/sessions/{pinned}/reset")
        assert r.status_code == 200, r.text
        first = await _feed(c, pinned, "to be")
        fresh = await _session(c)
        assert (await _feed(c, fresh, "to be"))["output"] == first["output"]
        # a settings.json that does not read refuses the load, saying why
        write_settings(root, {"max_batch_sise": 4})
        r = await c.post(f"/v1/repository/models/{NAME}/load", json={})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == "model_load_failed" and "max_batch_sise" in err["message"]
