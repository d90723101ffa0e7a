"""What a request body may declare itself as (issue 32.10, 32.12): a JSON surface answers a body
of another media type or charset 415 naming the content type, in its own error shape, and
refuses UTF-16/32 JSON (which `json.loads(bytes)` would take); v2 reads a body with no
Content-Type as JSON (tritonclient sends none) and takes `application/octet-stream` too."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.service.conftest import CLS, LM

NATIVE = (f"/v1/models/{CLS}/predict", {"inputs": ["a fine film"]})
OPENAI = ("/openai/v1/completions", {"model": LM, "prompt": "ab", "max_tokens": 2})
V2 = (
    f"/v2/models/{CLS}/infer",
    {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["a fine film"]}]},
)
SURFACES = {"native": NATIVE, "openai": OPENAI, "v2": V2}


def _message(surface: str, r: httpx.Response) -> str:
    body = r.json()
    return str(body["error"] if surface == "v2" else body["error"]["message"])


@pytest.mark.parametrize("surface", list(SURFACES))
@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "text/plain", "application/json; charset=utf-16"],
)
async def test_a_body_of_another_type_is_a_415_naming_it(
    client: httpx.AsyncClient, surface: str, content_type: str
) -> None:
    path, body = SURFACES[surface]
    r = await client.post(path, content=json.dumps(body), headers={"Content-Type": content_type})
    assert r.status_code == 415, r.text
    msg = _message(surface, r)
    assert ("charset" in msg) if "charset" in content_type else (content_type in msg)
    if surface != "v2":
        key = "param" if surface == "openai" else "field"
        assert r.json()["error"][key] == "content-type"


@pytest.mark.parametrize("surface", list(SURFACES))
@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
async def test_utf16_or_32_json_is_refused(
    client: httpx.AsyncClient, surface: str, encoding: str
) -> None:
    path, body = SURFACES[surface]
    raw = json.dumps(body).encode(encoding)
    r = await client.post(path, content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 415, r.text
    assert "UTF-8" in _message(surface, r)


@pytest.mark.parametrize("surface", list(SURFACES))
@pytest.mark.parametrize("content_type", ["application/json; charset=UTF-8", "APPLICATION/JSON"])
async def test_json_bodies_are_read(
    client: httpx.AsyncClient, surface: str, content_type: str | None
) -> None:
    path, body = SURFACES[surface]
    headers = {} if content_type is None else {"Content-Type": content_type}
    r = await client.post(path, content=json.dumps(body).encode(), headers=headers)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("surface", ["native", "openai"])
async def test_an_undeclared_body_is_a_415_where_it_is_not_read(
    client: httpx.AsyncClient, surface: str
) -> None:
    path, body = SURFACES[surface]
    r = await client.post(path, content=json.dumps(body).encode())
    assert r.status_code == 415, r.text
    assert "no Content-Type" in _message(surface, r)


async def test_v2_reads_an_undeclared_body_as_tritonclient_sends_it(
    client: httpx.AsyncClient,
) -> None:
    path, body = V2
    r = await client.post(path, content=json.dumps(body).encode())
    assert r.status_code == 200, r.text


async def test_v2_takes_octet_stream(client: httpx.AsyncClient) -> None:
    path, body = V2
    r = await client.post(
        path, content=json.dumps(body), headers={"Content-Type": "application/octet-stream"}
    )
    assert r.status_code == 200, r.text


async def test_an_empty_body_is_not_checked(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/sessions/none/close",
        headers={"Content-Type": "application/x-www-form-urlencoded", "Content-Length": "0"},
    )
    assert r.status_code != 415
