"""A session's state over HTTP (`GET /v1/sessions/{id}/state`, `POST /v1/sessions` with `state`):
an export resumes exactly where it was, and an import that is damaged, of another model, or
not finite is refused (422, `field: "state"`) and creates nothing."""

from __future__ import annotations

import base64

import httpx
import numpy as np

from tests.service.api.test_sessions import close, probs_of
from tests.service.conftest import CLS, LM, new_session


async def test_state_export_import(client: httpx.AsyncClient) -> None:
    sid = (await new_session(client, CLS))["session_id"]
    await client.post(f"/v1/sessions/{sid}/feed", json={"text": "a truly great fil"})
    st = (await client.get(f"/v1/sessions/{sid}/state")).json()
    assert st["version"] == 1 and st["model"] == CLS
    new = (await client.post("/v1/sessions", json={"state": st["state"]})).json()
    assert new["version"] == 1 and new["model"] == CLS and new["pending_chars"] == 3
    a = (await client.post(f"/v1/sessions/{sid}/feed", json={"text": "m, really"})).json()
    b = (
        await client.post(f"/v1/sessions/{new['session_id']}/feed", json={"text": "m, really"})
    ).json()
    assert close(probs_of(a["output"]), probs_of(b["output"]), 0)
    raw = bytearray(base64.b64decode(st["state"]))
    raw[-40] ^= 0xFF
    for body, code in [
        ({"model": LM, "state": st["state"]}, "state_model_mismatch"),
        ({"state": base64.b64encode(bytes(raw)).decode()}, "invalid_state"),
        ({"state": "not base64!"}, "invalid_state"),
    ]:
        r = await client.post("/v1/sessions", json=body)
        assert r.status_code == 422 and r.json()["error"]["code"] == code
        assert r.json()["error"]["field"] == "state"


async def test_state_blob_with_nan_or_wrong_shape_is_refused(client: httpx.AsyncClient) -> None:
    from service.sessions.blob import decode_state, encode_state

    sid = (await new_session(client, LM))["session_id"]
    await client.post(f"/v1/sessions/{sid}/feed", json={"text": "abc"})
    st = (await client.get(f"/v1/sessions/{sid}/state")).json()
    blob = decode_state(base64.b64decode(st["state"]))
    names = ["h", "c"]
    bad_nan = blob.states[0].copy()
    bad_nan[0, 0, 0] = np.nan
    bad_shape = blob.states[0][:, :, :5].copy()
    for states in ([bad_nan, blob.states[1]], [bad_shape, blob.states[1]], blob.states[:1]):
        data = encode_state(
            blob.__class__(**{**blob.__dict__, "states": states}), names[: len(states)]
        )
        r = await client.post("/v1/sessions", json={"state": base64.b64encode(data).decode()})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_state"


async def test_fresh_state_with_infinite_pool_round_trips(client: httpx.AsyncClient) -> None:
    sid = (await new_session(client, CLS))["session_id"]  # pool_max starts at -inf
    st = (await client.get(f"/v1/sessions/{sid}/state")).json()
    r = await client.post("/v1/sessions", json={"state": st["state"]})
    assert r.status_code == 201, r.text
    a = (await client.post(f"/v1/sessions/{sid}/feed", json={"text": "great fun "})).json()
    b = (
        await client.post(
            f"/v1/sessions/{r.json()['session_id']}/feed", json={"text": "great fun "}
        )
    ).json()
    assert a["output"] == b["output"]
