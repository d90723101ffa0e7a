"""An imported state is untrusted input (issues 15.8, 18.4, 18.8): every crafted blob is a 422
naming `state`, never a 500, never a stored session; a step with non-finite outputs is never
committed; and nothing an import does reaches another session's rows."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any

import httpx
import numpy as np
import pytest

from service.sessions.blob import (
    _FIXED,
    FORMAT,
    MAGIC,
    StateBlob,
    decode_state,
    encode_state,
)
from service.sessions.store import store_id
from tests.service.conftest import CHAR_MODELS, CLASSIFIERS, LM, app_of, new_session


async def _export(client: httpx.AsyncClient, model: str, text: str = "To be") -> StateBlob:
    sid = (await new_session(client, model))["session_id"]
    r = await client.post(f"/v1/sessions/{sid}/feed", json={"text": text})
    assert r.status_code == 200, r.text
    st = (await client.get(f"/v1/sessions/{sid}/state")).json()["state"]
    return decode_state(base64.b64decode(st))


def _names(client: httpx.AsyncClient, model: str) -> list[str]:
    m = app_of(client).state.local.engine.model(model)
    return [s.name for s in m.manifest.io.states]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def _import(client: httpx.AsyncClient, data: bytes) -> httpx.Response:
    return await client.post("/v1/sessions", json={"state": _b64(data)})


def _refused(r: httpx.Response) -> str:
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_state" and err["field"] == "state", err
    message: str = err["message"]
    return message


def _reframe(data: bytes, edit: Any) -> bytes:
    """The blob with its JSON header text edited and the checksum recomputed."""
    start = len(MAGIC) + _FIXED.size
    _, hlen = _FIXED.unpack_from(data, len(MAGIC))
    header = edit(data[start : start + hlen].decode()).encode()
    body = MAGIC + _FIXED.pack(FORMAT, len(header)) + header + data[start + hlen : -32]
    return body + hashlib.sha256(body).digest()


@pytest.mark.parametrize(
    "edit",
    [
        lambda h: h.replace('"version":1', '"version":Infinity'),
        lambda h: h.replace('"tokens_seen":5', '"tokens_seen":-Infinity'),
        lambda h: h.replace('"shape":[', '"shape":[Infinity,', 1),
        lambda h: h.replace('"version":1', '"version":' + "[" * 5000 + "]" * 5000),
        lambda h: h.replace('"version":1', '"version":-5'),
        lambda h: h.replace('"version":1', '"version":' + str(10**30)),
        lambda h: h.replace('"version":1', '"version":"7"'),
        lambda h: h.replace('"version":1', '"version":7.9'),
        lambda h: h.replace('"tokens_seen":5', '"tokens_seen":-100'),
        lambda h: h.replace('"pending":""', '"pending":{"a":1}'),
        lambda h: h.replace('"pending":""', '"pending":"\\u00e9\\u4e2d"'),  # not in the vocabulary
        lambda h: h.replace(
            '"pending":""', '"pending":"abc"'
        ),  # a char model leaves nothing pending
    ],
    ids=[
        "inf-version",
        "inf-tokens-seen",
        "inf-shape",
        "deep-nesting",
        "negative-version",
        "huge-version",
        "string-version",
        "float-version",
        "negative-tokens-seen",
        "dict-pending",
        "unknown-chars-pending",
        "unpending-text",
    ],
)
async def test_crafted_headers_are_422_and_store_nothing(
    client: httpx.AsyncClient, edit: Any
) -> None:
    blob = await _export(client, LM)
    data = encode_state(blob, _names(client, LM))
    assert blob.version == 1 and blob.tokens_seen == 5 and blob.pending == ""
    crafted = _reframe(data, edit)
    assert crafted != data
    _refused(await _import(client, crafted))
    assert (await _import(client, data)).status_code == 201  # the genuine one still imports


def _with_states(blob: StateBlob, fill: Any) -> StateBlob:
    return StateBlob(
        blob.model,
        blob.model_sha256,
        blob.version,
        blob.pending,
        blob.tokens_seen,
        [fill(a.copy()) for a in blob.states],
        blob.logits,
    )


@pytest.mark.parametrize("model", CHAR_MODELS + CLASSIFIERS)
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 3e38, -3e38, 1.5])
async def test_states_out_of_the_cells_range_are_refused(
    client: httpx.AsyncClient, model: str, value: float
) -> None:
    """h of every cell lies in [-1, 1]; a huge finite h makes a GRU's or tanh-RNN's next
    outputs NaN (it once answered 500 after committing)."""
    blob = await _export(client, model)

    def poison(a: np.ndarray) -> np.ndarray:
        a.flat[0] = value
        return a

    bad = _with_states(blob, poison)
    message = _refused(await _import(client, encode_state(bad, _names(client, model))))
    assert "tensor" in message


async def test_lstm_cell_state_is_bounded_by_the_tokens_seen(client: httpx.AsyncClient) -> None:
    blob = await _export(client, "tiny-char-lstm")  # 5 tokens seen: |c| <= 5
    names = _names(client, "tiny-char-lstm")
    assert abs(blob.states[1]).max() <= 5
    c = blob.states[1].copy()
    c.flat[0] = 4.9
    ok = StateBlob(**{**blob.__dict__, "states": [blob.states[0], c]})
    assert (await _import(client, encode_state(ok, names))).status_code == 201
    c.flat[0] = 50.0
    far = StateBlob(**{**blob.__dict__, "states": [blob.states[0], c]})
    assert "'c' exceeds 5" in _refused(await _import(client, encode_state(far, names)))


@pytest.mark.parametrize("model", CHAR_MODELS + CLASSIFIERS)
async def test_every_state_the_server_exports_reimports(
    client: httpx.AsyncClient, model: str
) -> None:
    blob = await _export(client, model, "To be, or not to be: that is the question. " * 8)
    r = await _import(client, encode_state(blob, _names(client, model)))
    assert r.status_code == 201, r.text


async def test_a_non_finite_step_is_never_committed(client: httpx.AsyncClient) -> None:
    """Defence in depth behind the import check: a record whose state went bad in the store
    (written there directly, at the seam) answers 422 for feed and generate, keeps its version,
    and an idempotent retry answers the same."""
    sid = (await new_session(client, "tiny-char-gru"))["session_id"]
    store = app_of(client).state.local.sessions.store
    rec = await store.get(store_id(sid, None))
    bad = rec.replace(
        version=rec.version + 1, states=tuple(np.full_like(s, 3e38) for s in rec.states)
    )
    await store.commit(bad, rec.version)
    for _ in range(2):  # the retry with the same key is refused alike, and commits nothing
        r = await client.post(
            f"/v1/sessions/{sid}/feed", json={"text": "abc"}, headers={"Idempotency-Key": "k1"}
        )
        _refused(r)
        r = await client.post(f"/v1/sessions/{sid}/generate", json={"max_tokens": 5})
        _refused(r)
        assert (await client.get(f"/v1/sessions/{sid}")).json()["version"] == rec.version + 1
    # refused before the stream opens: a plain JSON 422, no event carries a NaN
    r = await client.post(f"/v1/sessions/{sid}/generate", json={"max_tokens": 5, "stream": True})
    _refused(r)
    assert (await client.get(f"/v1/sessions/{sid}")).json()["version"] == rec.version + 1


async def test_poisoned_imports_never_touch_a_clean_batch_mate(client: httpx.AsyncClient) -> None:
    """A clean session generating while poisoned imports are tried beside it gives exactly
    the text (and the state) it gives alone."""
    body = {"prompt": "ROMEO:", "max_tokens": 40, "seed": 11, "temperature": 1.0}

    async def clean() -> tuple[str, str]:
        sid = (await new_session(client, LM))["session_id"]
        text = (await client.post(f"/v1/sessions/{sid}/generate", json=body)).json()["text"]
        state = (await client.get(f"/v1/sessions/{sid}/state")).json()["state"]
        return text, state[-200:]  # the tail: arrays and checksum

    alone = await clean()
    blob = await _export(client, LM)
    names = _names(client, LM)
    poisons = [
        encode_state(_with_states(blob, lambda a, v=v: np.full_like(a, v)), names)
        for v in (np.nan, 3e38, -np.inf)
    ]
    results = await asyncio.gather(clean(), *(_import(client, p) for p in poisons * 5), clean())
    assert results[0] == results[-1] == alone
    for r in results[1:-1]:
        _refused(r)


@pytest.mark.parametrize("field", ["version", "tokens_seen"])
async def test_counters_near_int64s_end_are_refused_and_2_62_runs(
    client: httpx.AsyncClient, field: str
) -> None:
    """Issue 32.10: imported at 2^63 - 1 and fed once, a version passed int64 and no export
    could write it. An import leaves 2^62 of headroom."""
    blob = await _export(client, LM)

    def at(n: int) -> bytes:
        b = StateBlob(**{**blob.__dict__, field: n})
        return encode_state(b, _names(client, LM))

    assert "2^62" in _refused(await _import(client, at(2**63 - 1)))
    r = await _import(client, at(2**62))
    assert r.status_code == 201, r.text
    sid = r.json()["session_id"]
    assert (await client.post(f"/v1/sessions/{sid}/feed", json={"text": "ab"})).status_code == 200
    r = await client.get(f"/v1/sessions/{sid}/state")
    assert r.status_code == 200
