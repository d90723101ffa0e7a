"""API keys: every surface needs one when keys are configured; sessions belong to their key and
another key sees exactly what a never-existing session looks like."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.keys import KeyRing, parse_file, parse_plain
from service.security import main
from tests.hardening.conftest import KEY_A, KEY_B, KEYS, auth
from tests.service.conftest import CLS, LM, ClientFactory, app_of

PROTECTED = [
    ("GET", "/v1/models", None),
    ("POST", f"/v1/models/{LM}/predict", {"inputs": ["ab"]}),
    ("POST", f"/v1/models/{LM}/generate", {"max_tokens": 2}),
    ("POST", "/v1/sessions", {"model": LM}),
    ("GET", "/v1/sessions/x", None),
    ("GET", "/v2", None),
    ("GET", f"/v2/models/{LM}", None),
    ("POST", f"/v2/models/{LM}/infer", {"inputs": []}),
    ("GET", "/openai/v1/models", None),
    ("POST", "/openai/v1/completions", {"model": LM, "prompt": "a"}),
    ("POST", "/v1/completions", {"model": LM, "prompt": "a"}),
]
OPEN = [
    "/healthz",
    "/readyz",
    "/v2/health/live",
    "/v2/health/ready",
    "/metrics",
    "/openapi.json",
    "/favicon.ico",
    "/docs",
    "/redoc",
    "/docs/static/swagger-ui-bundle.js",
    "/docs/static/redoc.standalone.js",
]


def _shape(path: str, body: dict[str, Any]) -> None:
    if path.startswith("/v2"):
        assert isinstance(body["error"], str)
    elif path.endswith("completions") or path.startswith("/openai"):
        assert body["error"]["type"] == "invalid_request_error"
        assert body["error"]["code"] == "unauthorized"
    else:
        assert body["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
async def test_every_surface_needs_a_key(
    make_client: ClientFactory, method: str, path: str, body: Any
) -> None:
    async with make_client(api_keys=KEYS) as c:
        for headers in ({}, auth("not-a-key-at-all-xxxx"), {"Authorization": f"Basic {KEY_A}"}):
            r = await c.request(method, path, json=body, headers=headers)
            assert r.status_code == 401, (path, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
            _shape(path, r.json())
            assert KEY_A not in r.text
        r = await c.request(method, path, json=body, headers=auth(KEY_A))
        assert r.status_code != 401, r.text


async def test_open_endpoints_are_configurable(make_client: ClientFactory) -> None:
    async with make_client(api_keys=KEYS) as c:
        for path in OPEN:
            assert (await c.get(path)).status_code == 200, path
    closed = {"auth_open_health": False, "auth_open_metrics": False, "auth_open_docs": False}
    async with make_client(api_keys=KEYS, **closed) as c:
        for path in OPEN:
            assert (await c.get(path)).status_code == 401, path
            assert (await c.get(path, headers=auth(KEY_B))).status_code == 200, path


async def test_keys_off_by_default(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/models")).status_code == 200


def _not_found_like(r: httpx.Response, sid: str, ghost: str, ghost_r: httpx.Response) -> None:
    """`r` (another key's session `sid`) equals `ghost_r` (a never-existing id) up to the id."""
    assert r.status_code == ghost_r.status_code, r.text
    assert r.text.replace(sid, "ID") == ghost_r.text.replace(ghost, "ID")


async def test_sessions_belong_to_their_key(make_client: ClientFactory) -> None:
    async with make_client(api_keys=KEYS) as c:
        a, b = auth(KEY_A), auth(KEY_B)
        r = await c.post("/v1/sessions", json={"model": LM}, headers=a)
        sid = r.json()["session_id"]
        assert len(sid) >= 22  # >= 128 bits of URL-safe base64
        await c.post(f"/v1/sessions/{sid}/feed", json={"text": "ab"}, headers=a)
        ghost = "G" * len(sid)
        ops: list[tuple[str, str, Any]] = [
            ("GET", "", None),
            ("GET", "/state", None),
            ("POST", "/feed", {"text": "x"}),
            ("POST", "/reset", None),
            ("POST", "/generate", {"max_tokens": 2}),
            ("POST", "/generate", {"max_tokens": 2, "stream": True}),
            ("DELETE", "", None),
        ]
        for method, suffix, body in ops:
            theirs = await c.request(method, f"/v1/sessions/{sid}{suffix}", json=body, headers=b)
            never = await c.request(method, f"/v1/sessions/{ghost}{suffix}", json=body, headers=b)
            assert theirs.status_code == 404
            _not_found_like(theirs, sid, ghost, never)
        # the OpenAI session extension and the v2 sequence with that id
        comp = {"model": LM, "prompt": "a", "max_tokens": 2}
        theirs = await c.post("/openai/v1/completions", json={**comp, "session_id": sid}, headers=b)
        never = await c.post(
            "/openai/v1/completions", json={**comp, "session_id": ghost}, headers=b
        )
        _not_found_like(theirs, sid, ghost, never)
        infer = {"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}
        theirs = await c.post(
            f"/v2/models/{LM}/infer", json={**infer, "parameters": {"sequence_id": sid}}, headers=b
        )
        never = await c.post(
            f"/v2/models/{LM}/infer",
            json={**infer, "parameters": {"sequence_id": ghost}},
            headers=b,
        )
        _not_found_like(theirs, sid, ghost, never)
        # nothing the other key did touched it
        info = (await c.get(f"/v1/sessions/{sid}", headers=a)).json()
        assert info["version"] == 1 and info["tokens_seen"] == 2


def test_websocket_needs_a_key_and_an_owned_session(make_client: ClientFactory) -> None:
    from service.app import create_app
    from service.settings import Settings
    from tests.conftest import FIXTURE_MODELS

    app = create_app(
        Settings(models_dir=FIXTURE_MODELS, api_keys=KEYS, log_json=False), configure_logs=False
    )
    with TestClient(app) as tc:
        sid = tc.post("/v1/sessions", json={"model": LM}, headers=auth(KEY_A)).json()["session_id"]
        from starlette.websockets import WebSocketDisconnect

        with (
            pytest.raises(WebSocketDisconnect) as e,
            tc.websocket_connect(f"/v1/sessions/{sid}/ws"),
        ):
            pass
        assert e.value.code == 1008
        with tc.websocket_connect(f"/v1/sessions/{sid}/ws", headers=auth(KEY_B)) as ws:
            msg = ws.receive_json()
            assert msg["type"] == "error" and msg["error"]["code"] == "session_not_found"
        with tc.websocket_connect(f"/v1/sessions/{sid}/ws", headers=auth(KEY_A)) as ws:
            ws.send_json({"type": "feed", "text": "ab"})
            assert ws.receive_json()["version"] == 1


async def test_hashed_keys_file(make_client: ClientFactory, tmp_path: Path, capsys: Any) -> None:
    assert main(["carol", "carol-key-0123456789abcdef"]) == 0
    line = capsys.readouterr().out
    f = tmp_path / "keys"
    f.write_text("# tenants\n" + line + "\n")
    assert "carol-key" not in f.read_text()
    async with make_client(api_keys_file=f) as c:
        assert (await c.get("/v1/models")).status_code == 401
        r = await c.get("/v1/models", headers=auth("carol-key-0123456789abcdef"))
        assert r.status_code == 200


def test_keyring_parsing_and_matching() -> None:
    ring = KeyRing(tuple(parse_plain([KEY_A, f"bob:{KEY_B}", " "])))
    assert ring.owner(KEY_B) == "bob"
    anon = ring.owner(KEY_A)
    assert anon is not None and anon.startswith("key-") and KEY_A not in anon
    assert ring.owner("nope") is None and ring.owner("") is None
    with pytest.raises(ValueError, match="shorter"):
        parse_plain(["short"])
    with pytest.raises(ValueError, match="line 1"):
        parse_file(["bob notahash"])
    digest = hashlib.sha256(KEY_B.encode()).hexdigest()
    assert parse_file([f"bob sha256:{digest}  # rotated 2026-11"]) == [
        (bytes.fromhex(digest), "bob")
    ]


async def test_owner_is_never_logged(make_client: ClientFactory, caplog: Any) -> None:
    import logging

    caplog.set_level(logging.DEBUG, logger="rnnserve")
    async with make_client(api_keys=KEYS) as c:
        await c.post(
            f"/v1/models/{CLS}/predict", json={"inputs": ["secret text"]}, headers=auth(KEY_A)
        )
        await c.get("/v1/models", headers=auth("wrong-key-0123456789"))
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert KEY_A not in text and "wrong-key" not in text and "secret text" not in text
    assert app_of(c) is not None


async def test_ids_are_namespaced_per_key(make_client: ClientFactory) -> None:
    """Two keys may pick the same session id, or the same Triton sequence id (clients love
    `sequence_id: 1`): two independent sessions, and neither learns the other exists."""
    async with make_client(api_keys=KEYS) as c:
        a, b = auth(KEY_A), auth(KEY_B)
        for h in (a, b):
            r = await c.post("/v1/sessions", json={"model": LM, "session_id": "chat-1"}, headers=h)
            assert r.status_code == 201 and r.json()["session_id"] == "chat-1"
        await c.post("/v1/sessions/chat-1/feed", json={"text": "abc"}, headers=a)
        assert (await c.get("/v1/sessions/chat-1", headers=a)).json()["version"] == 1
        assert (await c.get("/v1/sessions/chat-1", headers=b)).json()["version"] == 0
        r = await c.post("/v1/sessions", json={"model": LM, "session_id": "chat-1"}, headers=a)
        assert r.status_code == 409 and "'chat-1'" in r.json()["error"]["message"]
        infer = {"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", "data": ["ab"]}]}
        start = {**infer, "parameters": {"sequence_id": 1, "sequence_start": True}}
        for h in (a, b):
            r = await c.post(f"/v2/models/{LM}/infer", json=start, headers=h)
            assert r.status_code == 200, r.text
        step = {**infer, "parameters": {"sequence_id": 1}}
        assert (await c.post(f"/v2/models/{LM}/infer", json=step, headers=a)).status_code == 200
        va = (await c.get("/v1/sessions/1", headers=a)).json()["version"]
        vb = (await c.get("/v1/sessions/1", headers=b)).json()["version"]
        assert (va, vb) == (2, 1)
        state = (await c.get("/v1/sessions/1/state", headers=a)).json()
        assert state["session_id"] == "1"


async def test_bodies_are_logged_only_when_asked(make_client: ClientFactory, caplog: Any) -> None:
    import logging

    caplog.set_level(logging.DEBUG, logger="rnnserve")
    async with make_client(api_keys=KEYS, debug_log_bodies=True) as c:
        body = {"inputs": ["debug me"]}
        assert (
            await c.post(f"/v1/models/{CLS}/predict", json=body, headers=auth(KEY_A))
        ).is_success
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "debug me" in text and KEY_A not in text
