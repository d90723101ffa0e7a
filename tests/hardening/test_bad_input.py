"""Bad input on every surface: each gets a clear 4xx naming the problem, never a 500."""

from __future__ import annotations

import gzip
import json
import struct
from typing import Any

import httpx
import pytest

from tests.service.conftest import CLS, LM, new_session

J = {"content-type": "application/json"}
V2 = f"/v2/models/{LM}/infer"


def text_input(data: list[Any], name: str = "TEXT", datatype: str = "BYTES") -> dict[str, Any]:
    return {"inputs": [{"name": name, "shape": [len(data)], "datatype": datatype, "data": data}]}


# (method, path, raw body, headers, status, what the error must mention)
RAW: list[tuple[str, bytes, dict[str, str], int, str]] = [
    (f"/v1/models/{LM}/predict", b'{"inputs": ["ab', J, 400, "invalid_json"),  # truncated
    (f"/v1/models/{LM}/predict", b'{"inputs": ["\xff\xfe"]}', J, 400, "UTF-8"),
    (f"/v1/models/{LM}/predict", b'{"inputs": ["ab"], "top_k": NaN}', J, 422, "top_k"),
    (f"/v1/models/{LM}/generate", b'{"temperature": NaN}', J, 422, "temperature"),
    (f"/v1/models/{LM}/generate", b'{"top_p": Infinity}', J, 422, "top_p"),
    ("/openai/v1/completions", b'{"model": "x", "prompt": "\xc3\x28"}', J, 400, "JSON"),
    (
        "/openai/v1/completions",
        b'{"model": "tiny-char-lstm", "prompt": "a", "temperature": NaN}',
        J,
        400,
        "temperature",
    ),
    (V2, b'{"inputs": [', J, 400, "not valid JSON"),
    (V2, json.dumps(text_input([1.5], "TOKEN_IDS", "INT64")).encode(), J, 400, "INT64"),
    (
        V2,
        b'{"inputs": [{"name": "TOKEN_IDS", "shape": [1, 1], "datatype": "FP32", "data": [NaN]}]}',
        J,
        400,
        "INT64",
    ),
    (
        V2,
        b'{"inputs": [{"name": "TOKEN_IDS", "shape": [1, 1], "datatype": "INT64", "data": [NaN]}]}',
        J,
        400,
        "INT64",
    ),
    (
        V2,
        json.dumps(text_input(["a"])).encode(),
        {"Inference-Header-Content-Length": "abc"},
        400,
        "Inference-Header-Content-Length",
    ),
    (
        V2,
        json.dumps(text_input(["a"])).encode(),
        {"Inference-Header-Content-Length": "-1"},
        400,
        "Inference-Header-Content-Length",
    ),
    (
        V2,
        json.dumps(text_input(["a"])).encode(),
        {"Inference-Header-Content-Length": "99999"},
        400,
        "Inference-Header-Content-Length",
    ),
    (
        V2,
        json.dumps(text_input(["a"])).encode()[:-5],
        {"Inference-Header-Content-Length": "10"},
        400,
        "JSON",
    ),
    (V2, b"\x1f\x8b\x08\x00trunc", {"Content-Encoding": "gzip"}, 400, "gzip"),
    (V2, b"{}", {"Content-Encoding": "br"}, 415, "Content-Encoding"),
]


@pytest.mark.parametrize(("path", "body", "headers", "status", "mention"), RAW)
async def test_malformed_bodies(
    client: httpx.AsyncClient,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    mention: str,
) -> None:
    r = await client.post(path, content=body, headers={**J, **headers})
    assert r.status_code == status, r.text
    assert mention.lower() in r.text.lower(), r.text


def _binary_text(items: list[bytes], declared: int | None = None) -> tuple[bytes, dict[str, str]]:
    raw = b"".join(struct.pack("<I", len(b)) + b for b in items)
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "TEXT",
                    "shape": [len(items)],
                    "datatype": "BYTES",
                    "parameters": {
                        "binary_data_size": declared if declared is not None else len(raw)
                    },
                }
            ]
        }
    ).encode()
    return head + raw, {"Inference-Header-Content-Length": str(len(head))}


async def test_v2_binary_tensors(client: httpx.AsyncClient) -> None:
    body, h = _binary_text([b"\xff\xfe bad utf-8"])
    r = await client.post(V2, content=body, headers=h)
    assert r.status_code == 400 and "UTF-8" in r.json()["error"]
    body, h = _binary_text([b"abc"])
    r = await client.post(V2, content=body[:-2], headers=h)  # truncated binary part
    assert r.status_code == 400 and "binary_data_size" in r.json()["error"]
    body, h = _binary_text([b"ab"], declared=100)
    r = await client.post(V2, content=body, headers=h)
    assert r.status_code == 400
    ok, h = _binary_text([b"To be"])
    assert (await client.post(V2, content=ok, headers=h)).status_code == 200


async def test_v2_decompression_is_bounded(make_client: Any) -> None:
    bomb = gzip.compress(b"{" + b" " * (4 << 20) + b"}")  # 4 MiB of JSON in ~4 KiB
    async with make_client(max_body_bytes=1 << 20) as c:
        r = await c.post(V2, content=bomb, headers={"Content-Encoding": "gzip"})
        assert r.status_code == 413 and "limit" in r.json()["error"], r.text


# JSON bodies that parse but are wrong: (path, body, status, field)
BAD: list[tuple[str, dict[str, Any], int, str]] = [
    (f"/v1/models/{LM}/predict", {"inputs": [""]}, 422, "inputs[0]"),
    (f"/v1/models/{LM}/predict", {"inputs": []}, 422, "inputs"),
    (f"/v1/models/{LM}/predict", {"inputs": "abc"}, 422, "inputs"),
    (f"/v1/models/{LM}/predict", {"inputs": [123]}, 422, "inputs[0]"),
    (f"/v1/models/{LM}/predict", {"inputs": ["a\x00\x07b"]}, 422, "inputs[0]"),
    (f"/v1/models/{LM}/predict", {"inputs": ["snow \u2603"]}, 422, "inputs[0]"),
    (f"/v1/models/{LM}/predict", {"inputs": ["lone \ud800 surrogate"]}, 422, "inputs[0]"),
    (f"/v1/models/{LM}/predict", {"inputs": ["ab"], "top_k": 10**30}, 422, "top_k"),
    (f"/v1/models/{LM}/predict", {"inputs": ["ab"], "extra": 1}, 422, "extra"),
    (f"/v1/models/{LM}/generate", {"max_tokens": 10**30}, 422, "max_tokens"),
    (f"/v1/models/{LM}/generate", {"max_tokens": "many"}, 422, "max_tokens"),
    (f"/v1/models/{LM}/generate", {"top_k": 10**30}, 422, "top_k"),
    (f"/v1/models/{LM}/generate", {"top_k": 2**62}, 422, "top_k"),
    (f"/v1/models/{LM}/generate", {"seed": 2**70}, 422, "seed"),
    (f"/v1/models/{LM}/generate", {"temperature": 1e308}, 422, "temperature"),
    (f"/v1/models/{LM}/generate", {"stop": [""]}, 422, "stop"),
    (f"/v1/models/{LM}/generate", {"prompt": "\x00"}, 422, "prompt"),
    (f"/v1/models/{LM}/generate", {"prompt": ""}, 200, ""),  # empty: primed from the manifest
    (f"/v1/models/{CLS}/generate", {"max_tokens": 2}, 400, "model"),
    ("/v1/sessions", {"model": LM, "ttl_s": 1e300}, 422, "ttl_s"),
    ("/v1/sessions", {"model": LM, "session_id": "../etc"}, 422, "session_id"),
    ("/v1/sessions", {"model": LM, "session_id": "x" * 129}, 422, "session_id"),
    ("/v1/sessions", {"model": LM, "state": "!!!"}, 422, "state"),
    ("/v1/sessions", {"model": "nope"}, 404, "model"),
    ("/openai/v1/completions", {"model": LM, "prompt": "\ud800"}, 400, "prompt"),
    (
        "/openai/v1/completions",
        {"model": LM, "prompt": "a", "max_tokens": 10**30},
        400,
        "max_tokens",
    ),
    ("/openai/v1/completions", {"model": LM, "prompt": "a", "top_k": 2**62}, 400, "top_k"),
    ("/openai/v1/completions", {"model": LM, "prompt": [[1, 2]]}, 400, "prompt"),
    (V2, text_input(["\x00\x01"]), 400, "TEXT[0]"),
    (V2, text_input([""]), 400, "TEXT[0]"),
    (V2, text_input([1]), 400, "TEXT"),
    (V2, text_input([[0, 1]], "TOKEN_IDS", "INT64") | {}, 400, "TOKEN_IDS"),
    (
        V2,
        {
            "inputs": [
                {"name": "TOKEN_IDS", "shape": [1, 2], "datatype": "INT64", "data": [0, 2**70]}
            ]
        },
        400,
        "TOKEN_IDS",
    ),
    (
        V2,
        {
            "inputs": [
                {"name": "TOKEN_IDS", "shape": [1, 2], "datatype": "INT64", "data": [0, 10**6]}
            ]
        },
        400,
        "TOKEN_IDS",
    ),
    (
        V2,
        {"inputs": [{"name": "TEXT", "shape": [2**40], "datatype": "BYTES", "data": ["a"]}]},
        400,
        "TEXT",
    ),
    (
        V2,
        {"inputs": [{"name": "TEXT", "shape": [-1], "datatype": "BYTES", "data": ["a"]}]},
        400,
        "TEXT",
    ),
]


def _dumps(body: dict[str, Any]) -> bytes:
    # surrogates cannot be encoded as UTF-8: send them as JSON escapes, as a client may
    return json.dumps(body, ensure_ascii=True).encode()


@pytest.mark.parametrize(("path", "body", "status", "field"), BAD)
async def test_invalid_values_name_the_field(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], status: int, field: str
) -> None:
    r = await client.post(path, content=_dumps(body), headers=J)
    assert r.status_code == status, r.text
    if status >= 400:
        assert field in r.text, r.text
        r.json()  # always a JSON error body


async def test_session_inputs(client: httpx.AsyncClient) -> None:
    sid = (await new_session(client))["session_id"]
    for body, field in (
        ({"text": ""}, "text"),
        ({"text": "\x00"}, "text"),
        ({"text": "\ud800"}, "text"),
        ({"text": 5}, "text"),
        ({"text": "a", "expected_version": -1}, "expected_version"),
        ({"text": "a", "expected_version": 10**30}, "expected_version"),
    ):
        r = await client.post(f"/v1/sessions/{sid}/feed", content=_dumps(body), headers=J)
        assert 400 <= r.status_code < 500 and field in r.text, r.text
    r = await client.post(
        f"/v1/sessions/{sid}/feed", json={"text": "a"}, headers={"Idempotency-Key": ""}
    )
    assert r.status_code == 422 and "Idempotency-Key" in r.text
    assert (await client.get(f"/v1/sessions/{sid}")).json()["version"] == 0


async def test_control_characters_policy(client: httpx.AsyncClient) -> None:
    """Char models: characters outside the vocabulary (control characters included) are a 422
    listing them, unless the manifest names an unk token. Word models: unknown words -> [UNK]."""
    r = await client.post(f"/v1/models/{LM}/predict", json={"inputs": ["ab\x07c\u2603"]})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "unknown_characters" and err["field"] == "inputs[0]"
    assert "\\x07" in err["message"] or "\x07" in err["message"]
    r = await client.post(f"/v1/models/{CLS}/predict", json={"inputs": ["good \x07 film \u2603"]})
    assert r.status_code == 200
