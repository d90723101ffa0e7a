"""`service/api/router_bypass.py`: the hot routes (feed, predict, streamed generate) served past
FastAPI's router answer exactly as the declared routes do, for good requests and for every kind
of bad one."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from service.api import router_bypass
from service.api.deps import get_services
from service.api.router_bypass import ROUTES, DirectRoute, _accept, _Bound
from service.api.schemas import FeedRequest
from service.app import create_app
from service.engine.registry import Registry
from service.settings import Settings
from tests.service.conftest import CLS, LM, FakeClock

JSON = "application/json"
FEED = "/v1/sessions/s1/feed"
GEN = f"/v1/models/{LM}/generate"

# (method, path, headers, body): one sequence, run in order against both apps (feeds advance the
# session, so a divergence anywhere shows up in every later answer too)
CASES: list[tuple[str, str, dict[str, str], bytes | None]] = [
    ("POST", FEED, {"content-type": JSON}, b'{"text": "ROMEO"}'),
    ("POST", FEED, {"content-type": "application/json; charset=utf-8"}, b'{"text": ":\\n"}'),
    ("POST", FEED, {"content-type": "Application/JSON"}, b'{"text": "Wh", "top_k": 3}'),
    ("POST", FEED, {"content-type": "application/vnd.x+json"}, b'{"text": "a"}'),
    ("POST", FEED, {"content-type": "text/plain"}, b'{"text": "a"}'),
    ("POST", FEED, {}, b'{"text": "a"}'),
    ("POST", FEED, {"content-type": JSON}, b'{"text": '),
    ("POST", FEED, {"content-type": JSON}, b"[1, 2]"),
    ("POST", FEED, {"content-type": JSON}, b""),
    ("POST", FEED, {"content-type": JSON}, b'{"text": ""}'),
    ("POST", FEED, {"content-type": JSON}, b'{"text": "a", "extra": 1}'),
    ("POST", FEED, {"content-type": JSON}, b'{"text": "a", "top_k": "5"}'),
    ("POST", FEED, {"content-type": JSON}, b'{"text": "a", "top_k": 5.0}'),
    ("POST", FEED, {"content-type": JSON}, b'{"text": "a", "expected_version": 99}'),
    ("POST", FEED, {"content-type": JSON}, b'{"text": "a", "expected_version": 3}'),
    ("POST", FEED, {"content-type": JSON}, b'{"text": "' + b"x" * 41 + b'"}'),
    ("POST", FEED, {"content-type": JSON}, b'{"text": "a\xff"}'),
    ("POST", FEED, {"content-type": JSON}, b'{"text": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
    ("POST", FEED, {"content-type": JSON}, '{"text": "\u20ac"}'.encode()),
    ("POST", FEED, {"content-type": JSON, "idempotency-key": ""}, b'{"text": "b"}'),
    ("POST", FEED, {"content-type": JSON, "idempotency-key": "k" * 257}, b'{"text": "b"}'),
    ("POST", FEED, {"content-type": JSON, "idempotency-key": "k1"}, b'{"text": "b"}'),
    ("POST", FEED, {"content-type": JSON, "idempotency-key": "k1"}, b'{"text": "b"}'),
    ("POST", FEED, {"content-type": JSON, "idempotency-key": "k1"}, b'{"text": "c"}'),
    ("POST", "/v1/sessions/nope/feed", {"content-type": JSON}, b'{"text": "a"}'),
    ("POST", FEED + "/", {"content-type": JSON}, b'{"text": "a"}'),
    ("POST", "/v1/sessions//feed", {"content-type": JSON}, b'{"text": "a"}'),
    ("GET", FEED, {}, None),
    ("POST", f"/v1/models/{CLS}/predict", {"content-type": JSON}, b'{"inputs": ["a fine film"]}'),
    ("POST", f"/v1/models/{CLS}/predict", {"content-type": JSON}, b'{"inputs": []}'),
    ("POST", f"/v1/models/{CLS}/predict", {"content-type": JSON}, b'{"inputs": ["a", "b", "c"]}'),
    (
        "POST",
        f"/v1/models/{LM}/predict",
        {"content-type": JSON},
        b'{"inputs": ["ROM"], "top_k": 2}',
    ),
    ("POST", "/v1/models/nope/predict", {"content-type": JSON}, b'{"inputs": ["a"]}'),
    ("POST", f"/v1/models/{CLS}/predict", {"content-type": JSON}, b'{"inputs": "a"}'),
    ("POST", f"/v1/models/{CLS}/predict", {"content-type": JSON}, b'{"inputs": [1]}'),
    # a streamed generation (seeded: both apps sample the same text); without `stream` it is
    # FastAPI's, whose JSON goes through the response model
    (
        "POST",
        GEN,
        {"content-type": JSON},
        b'{"prompt": "RO", "max_tokens": 12, "seed": 7, "stream": true}',
    ),
    (
        "POST",
        GEN,
        {"content-type": JSON},
        b'{"prompt": "RO", "max_tokens": 3, "seed": 1, "logprobs": 2, "stream": true}',
    ),
    (
        "POST",
        GEN,
        {"content-type": JSON},
        b'{"max_tokens": 30, "seed": 3, "stop": ["e", "o"], "temperature": 1.5, "stream": true}',
    ),
    ("POST", GEN, {"content-type": JSON}, b'{"prompt": "RO", "max_tokens": 12, "seed": 7}'),
    ("POST", GEN, {"content-type": JSON}, b'{"max_tokens": 5, "seed": 7, "stream": false}'),
    ("POST", GEN, {"content-type": JSON}, b'{"max_tokens": 100000000, "stream": true}'),
    ("POST", GEN, {"content-type": JSON}, b'{"prompt": "' + b"x" * 41 + b'", "stream": true}'),
    ("POST", GEN, {"content-type": JSON}, b'{"stop": [""], "stream": true}'),
    ("POST", GEN, {"content-type": JSON}, b'{"temperature": -1, "stream": true}'),
    ("POST", GEN, {"content-type": JSON}, b'{"stream": "yes"}'),
    ("POST", GEN, {"content-type": "text/plain"}, b'{"seed": 2, "max_tokens": 2, "stream": true}'),
    ("POST", "/v1/models/nope/generate", {"content-type": JSON}, b'{"stream": true}'),
]
HEADERS = (
    "content-type",
    "idempotent-replayed",
    "allow",
    "location",
    "retry-after",
    "cache-control",
    "x-accel-buffering",
)


@contextlib.asynccontextmanager
async def served(
    registry: Registry, clock: FakeClock, direct: bool
) -> AsyncIterator[httpx.AsyncClient]:
    # a 40-character text limit and 2 inputs per prediction, so the handler's own checks run
    s = Settings(max_wait_ms=1.0, log_json=False, max_text_chars=40, max_inputs=2)
    app = create_app(s, registry=registry, clock=clock, configure_logs=False, direct_routes=direct)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            c.app = app  # type: ignore[attr-defined]
            r = await c.post("/v1/sessions", json={"model": LM, "session_id": "s1"})
            assert r.status_code == 201, r.text
            yield c


async def answers(c: httpx.AsyncClient) -> list[tuple[int, dict[str, str], Any]]:
    out = []
    for method, path, headers, body in CASES:
        r = await c.request(method, path, headers=headers, content=body)
        kept = {h: r.headers[h] for h in HEADERS if h in r.headers}
        if r.headers.get("content-type", "").startswith("text/event-stream"):
            out.append((r.status_code, kept, r.text))
        else:
            out.append((r.status_code, kept, r.json() if r.content else None))
    return out


async def test_every_answer_is_the_declared_routes(registry: Registry) -> None:
    async with served(registry, FakeClock(), direct=False) as c:
        expected = await answers(c)
    async with served(registry, FakeClock(), direct=True) as c:
        got = await answers(c)
    for case, e, g in zip(CASES, expected, got, strict=True):
        assert g == e, case
    # the sequence covers what it means to: successes, the handler's own errors, FastAPI's
    statuses = {e[0] for e in expected}
    assert {200, 400, 404, 405, 409, 422} <= statuses, statuses
    assert any(e[1].get("idempotent-replayed") == "true" for e in expected)
    streams = [e[2] for e in expected if isinstance(e[2], str)]
    assert len(streams) == 3 and all(x.endswith("data: [DONE]\n\n") for x in streams)
    assert '"logprob"' in streams[1] and '"finish_reason": "stop"' in streams[2]


async def test_good_requests_skip_the_router(
    registry: Registry, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A good feed, prediction or streamed generation is answered without handing the request
    on; a bad one (or a generation without `stream`) is handed to FastAPI with its body
    replayed, and so is every request while dependency overrides are set (the direct path does
    not read dependencies)."""
    handed_on = 0
    real_replay = router_bypass._replay

    def counted(messages: Any, receive: Any) -> Any:
        nonlocal handed_on
        handed_on += 1
        return real_replay(messages, receive)

    monkeypatch.setattr(router_bypass, "_replay", counted)
    async with served(registry, clock, direct=True) as c:
        assert (await c.post(FEED, json={"text": "ROMEO"})).status_code == 200
        r = await c.post(f"/v1/models/{CLS}/predict", json={"inputs": ["a fine film"]})
        assert r.status_code == 200
        r = await c.post(GEN, json={"max_tokens": 3, "stream": True})
        assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
        assert handed_on == 0
        assert (await c.post(FEED, json={"text": "a", "top_k": 0})).status_code == 422
        assert handed_on == 1
        assert (await c.post(GEN, json={"max_tokens": 3})).status_code == 200  # not streamed
        assert handed_on == 2

        real = c.app.state.services  # type: ignore[attr-defined]
        overridden = 0

        async def override() -> Any:
            nonlocal overridden
            overridden += 1
            return real

        c.app.dependency_overrides[get_services] = override  # type: ignore[attr-defined]
        assert (await c.post(FEED, json={"text": "a"})).status_code == 200
        assert overridden == 1  # FastAPI answered, with the override


async def test_metrics_name_the_declared_route(registry: Registry, clock: FakeClock) -> None:
    async with served(registry, clock, direct=True) as c:
        assert (await c.post(FEED, json={"text": "ROMEO"})).status_code == 200
        text = (await c.get("/metrics")).text
    line = next(
        x
        for x in text.splitlines()
        if x.startswith("rnnserve_requests_total") and 'route="/v1/sessions/{session_id}/feed"' in x
    )
    assert 'status="200"' in line and line.endswith(" 1.0"), line


async def test_a_chunked_body_is_read_whole(registry: Registry, clock: FakeClock) -> None:
    """A body in several chunks (no Content-Length) is served; a bad one still gets FastAPI's
    answer, from the replayed chunks."""

    async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
        for p in parts:
            yield p

    async with served(registry, clock, direct=True) as c:
        r = await c.post(
            FEED, headers={"content-type": JSON}, content=chunks(b'{"te', b'xt": "RO"}')
        )
        assert r.status_code == 200 and r.json()["tokens"] == 2, r.text
        r = await c.post(FEED, headers={"content-type": JSON}, content=chunks(b'{"te', b'xt": 5}'))
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"] == "text"


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/v1/sessions/abc/feed", "abc"),
        ("/v1/sessions/a%2Fb/feed", "a%2Fb"),  # scope["path"] is decoded: a real "/" is no match
        ("/v1/sessions/a/b/feed", None),
        ("/v1/sessions//feed", None),
        ("/v1/sessions/abc/feed/", None),
        ("/v1/sessions/abc/feeds", None),
        ("/v1/sessions/feed", None),
    ],
)
def test_match_takes_one_path_segment(path: str, param: str | None) -> None:
    spec = ROUTES[0]
    route: Any = object()
    assert _Bound(spec, route).match(path) == param


def _scope(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"headers": list(headers)}


@pytest.mark.parametrize(
    ("headers", "body", "taken"),
    [
        ([(b"content-type", b"application/json")], b'{"text": "a"}', True),
        ([(b"content-type", b"application/json ; charset=utf-8")], b'{"text": "a"}', True),
        ([(b"content-type", b"application/jsonx")], b'{"text": "a"}', False),
        ([], b'{"text": "a"}', False),
        ([(b"content-type", b"application/json")], b'{"text": 1}', False),
        ([(b"content-type", b"application/json")], b"\xff", False),
        # the first Content-Type counts, as in Starlette's `Headers.get`
        ([(b"content-type", b"text/plain"), (b"content-type", b"application/json")], b"{}", False),
    ],
)
def test_accept_only_what_fastapi_would(
    headers: list[tuple[bytes, bytes]], body: bytes, taken: bool
) -> None:
    spec = DirectRoute("/x/{p}/y", FeedRequest, ROUTES[0].handle, idempotent=True)
    got = _accept(spec, _scope(*headers), body)
    assert (got is not None) == taken


def test_accept_reads_the_first_idempotency_key_within_bounds() -> None:
    spec = ROUTES[0]
    ct = (b"content-type", b"application/json")
    body = b'{"text": "a"}'
    got = _accept(spec, _scope(ct, (b"idempotency-key", b"k1"), (b"idempotency-key", b"k2")), body)
    assert got is not None and got[1] == "k1"
    assert _accept(spec, _scope(ct, (b"idempotency-key", b"")), body) is None
    assert _accept(spec, _scope(ct, (b"idempotency-key", b"k" * 257)), body) is None
    # a route without the header ignores it, as its FastAPI declaration does
    predict = ROUTES[1]
    got = _accept(predict, _scope(ct, (b"idempotency-key", b"")), b'{"inputs": ["a"]}')
    assert got is not None and got[1] is None
