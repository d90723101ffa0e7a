"""`service.client` against a real uvicorn on a free loopback port with the fixture models.

Faults are injected at the client's seam (an httpx transport wrapper that drops a response after
the server handled the request, or answers 503 once), never by faking the server."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

import service.errors as server_errors
from service.app import create_app
from service.client import (
    Client,
    InvalidInput,
    ModelNotFound,
    Overloaded,
    Retry,
    SessionExpired,
    SessionGone,
    SessionLimit,
    SessionNotFound,
    TransportError,
    UnsupportedTask,
    VersionConflict,
)
from service.client._core import Call
from service.client.errors import _BY_CODE, error_from_body
from service.client.types import Output
from service.engine.registry import Registry
from service.settings import Settings
from tests.conftest import FIXTURE_MODELS, LONG, ROOT
from tests.servers import serve_in_thread
from tests.service.api.test_sessions import TEXT, chunks, close
from tests.service.conftest import CLASSIFIERS, LM, FakeClock

FAST = Retry(attempts=4, backoff_s=0.01)


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def live(registry: Registry, clock: FakeClock) -> Iterator[tuple[str, FastAPI]]:
    app = create_app(
        Settings(
            models_dir=FIXTURE_MODELS, max_wait_ms=1.0, max_sessions=64, max_tokens_limit=LONG
        ),
        registry=registry,
        clock=clock,
        configure_logs=False,
    )
    with serve_in_thread(app) as addr:
        yield f"http://{addr}", app


@pytest.fixture
def client(live: tuple[str, FastAPI]) -> Iterator[Client]:
    with Client(live[0], retry=FAST) as c:
        yield c


def probs(o: Output | None) -> dict[str, float]:
    assert o is not None
    if o.probs is not None:
        return o.probs
    assert o.next is not None
    return dict(o.next)


class Faulty(httpx.BaseTransport):
    """Wraps the real transport. `drop`: paths whose first response is lost after the server
    handled the request (a broken connection); `busy`: paths answered 503 once, before sending."""

    def __init__(self, drop: str = "", busy: str = "", retry_after: str = "0.2") -> None:
        self.inner = httpx.HTTPTransport()
        self.drop, self.busy, self.retry_after = drop, busy, retry_after
        self.seen: list[tuple[str, str | None]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.seen.append((path, request.headers.get("idempotency-key")))
        if self.busy and path.endswith(self.busy):
            self.busy = ""
            body = {"error": {"code": "overloaded", "message": "queue full"}}
            return httpx.Response(503, json=body, headers={"Retry-After": self.retry_after})
        response = self.inner.handle_request(request)
        if self.drop and path.endswith(self.drop):
            self.drop = ""
            response.read()
            response.close()
            raise httpx.ReadError("connection reset after the server answered", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


# -- the API ---------------------------------------------------------------------------------------


def test_models(client: Client) -> None:
    models = {m.name: m for m in client.models()}
    assert {LM, *CLASSIFIERS} <= set(models)
    assert models[LM].task == "next_token" and models[CLASSIFIERS[0]].labels
    assert client.model(LM).raw["training"] is not None
    with pytest.raises(ModelNotFound) as e:
        client.model("nope")
    assert e.value.status == 404 and e.value.code == "model_not_found"


@pytest.mark.parametrize("model", [*CLASSIFIERS, LM])
def test_chunked_session_feed_equals_one_shot_predict(client: Client, model: str) -> None:
    text = TEXT["word" if model in CLASSIFIERS else "char"]
    (whole,) = client.predict(model, [text], top_k=5)
    with client.session(model) as s:
        for i, piece in enumerate(chunks(text, seed=3)):
            out = s.feed(piece, top_k=5)
            assert out.version == s.version == i + 1
        assert close(probs(out.output), probs(whole))
        if whole.label is not None:
            assert out.output is not None and out.output.label == whole.label


def test_generate_stream_equals_generate(client: Client) -> None:
    params: dict[str, Any] = {"max_tokens": 20, "temperature": 0.9, "seed": 11}
    done = client.generate(LM, "ROMEO:", **params)
    assert done.finish_reason == "length" and done.usage["completion_tokens"] == 20
    with client.generate(LM, "ROMEO:", stream=True, **params) as stream:
        tokens = list(stream)
    assert "".join(tokens) == done.text and stream.result is not None
    assert stream.result.text == done.text and stream.result.seed == 11
    assert client.generate(LM, "ROMEO:", stream=True, **params).text() == done.text


def test_session_generate_tracks_version(client: Client) -> None:
    with client.session(LM) as s:
        s.feed("JULIET:")
        g = s.generate(max_tokens=5, seed=1)
        assert g.version == s.version == 2 and g.session_id == s.id
        stream = s.generate(" ", stream=True, max_tokens=5, seed=1)
        text = "".join(stream)
        assert stream.result is not None and stream.result.text == text and s.version == 3
        assert s.info().version == 3


def test_stopping_a_stream_commits_nothing(client: Client) -> None:
    with client.session(LM) as s:
        s.feed("A")
        stream = s.generate(stream=True, max_tokens=LONG, seed=2)
        assert next(stream)
        stream.close()  # closes the connection: the server cancels the generation
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the session lock is freed once the server sees it
            try:
                assert s.feed("B", expected_version=1).version == 2
                break
            except VersionConflict:
                time.sleep(0.05)
        assert s.info().version == 2 and s.info().tokens_seen == 2


def test_reset_export_and_resume(client: Client) -> None:
    model = CLASSIFIERS[0]
    text = TEXT["word"]
    with client.session(model) as s:
        s.feed(text[:30])
        blob = s.export_state()
        with client.session(state=blob) as resumed:
            assert resumed.model == model
            a = resumed.feed(text[30:])
        b = s.feed(text[30:])
        assert close(probs(a.output), probs(b.output))
        info = s.reset()
        assert info.version == s.version == 3 and info.tokens_seen == 0


def test_session_deleted_on_exit(client: Client) -> None:
    with client.session(LM) as s:
        sid = s.id
    with pytest.raises(SessionNotFound):
        client.session_info(sid)
    s.delete()  # already gone: not an error


def test_typed_errors(client: Client, clock: FakeClock) -> None:
    with pytest.raises(InvalidInput) as e:
        client.generate(LM, "x", max_tokens=LONG + 1)
    assert e.value.field == "max_tokens" and e.value.status == 422
    with pytest.raises(InvalidInput) as e:
        client.predict(LM, [])
    assert e.value.field == "inputs"
    with pytest.raises(UnsupportedTask):
        client.generate(CLASSIFIERS[0], "good")
    with pytest.raises(SessionNotFound):
        client.attach("no-such-session")
    with client.session(LM) as s:
        s.feed("a")
        with pytest.raises(VersionConflict) as vc:
            s.feed("b", expected_version=0)
        assert vc.value.field == "expected_version"
    s = client.session(LM, ttl_s=5)
    clock.advance(10)
    with pytest.raises(SessionExpired) as ex:
        s.feed("a")
    assert isinstance(ex.value, SessionGone) and not isinstance(ex.value, SessionNotFound)
    with pytest.raises(InvalidInput):
        s.generate(stream=True, max_tokens=LONG + 1).text()


def test_error_codes_cover_the_service() -> None:
    codes = {
        c.code
        for c in vars(server_errors).values()
        if isinstance(c, type) and c.__module__ == server_errors.__name__
    }
    # sequence_error is answered on /v2 only (in v2's own error shape), never to this client
    assert codes - {"internal_error", "sequence_error"} <= set(_BY_CODE), codes - set(_BY_CODE)
    err = error_from_body(503, {"error": {"code": "overloaded", "message": "busy"}}, 2.0)
    assert isinstance(err, Overloaded) and err.retry_after == 2.0
    assert error_from_body(502, "<html>bad gateway</html>").status == 502


# -- retries -------------------------------------------------------------------------------------


def test_dropped_feed_response_is_retried_without_feeding_twice(live: tuple[str, FastAPI]) -> None:
    faulty = Faulty(drop="/feed")
    with Client(live[0], retry=FAST, transport=faulty) as c, c.session(LM) as s:
        out = s.feed("hello")
        assert out.replayed and out.version == s.version == 1  # stored result, not a second feed
        assert s.info().tokens_seen == 5
    feeds = [key for path, key in faulty.seen if path.endswith("/feed")]
    assert len(feeds) == 2 and feeds[0] == feeds[1] and feeds[0]


def test_dropped_create_response_finds_its_session(live: tuple[str, FastAPI]) -> None:
    faulty = Faulty(drop="/v1/sessions")
    with Client(live[0], retry=FAST, transport=faulty) as c, c.session(LM) as s:
        assert s.version == 0 and s.feed("x").version == 1
    creates = [p for p, _ in faulty.seen if p == "/v1/sessions"]
    assert len(creates) == 2


def test_dropped_generate_response_replays_the_stored_text(live: tuple[str, FastAPI]) -> None:
    with Client(live[0], retry=FAST, transport=Faulty(drop="/generate")) as c, c.session(LM) as s:
        g = s.generate("A", max_tokens=8, seed=5)
        assert g.replayed and s.version == 1
        assert s.info().tokens_seen == 1 + 8


def test_dropped_stream_before_any_token_replays_whole_text(live: tuple[str, FastAPI]) -> None:
    faulty = Faulty(drop="/generate")  # the server streamed and committed; the client saw nothing
    with Client(live[0], retry=FAST, transport=faulty) as c, c.session(LM) as s:
        s.feed("A")
        stream = s.generate(stream=True, max_tokens=8, seed=5)
        chunks = list(stream)
        assert stream.result is not None and stream.result.replayed
        assert chunks == [stream.result.text] and s.version == 2
        assert s.info().tokens_seen == 1 + 8  # generated once, not twice
    keys = [k for p, k in faulty.seen if p.endswith("/generate")]
    assert len(keys) == 2 and keys[0] == keys[1]


def test_503_is_retried_after_retry_after(live: tuple[str, FastAPI]) -> None:
    faulty = Faulty(busy="/predict", retry_after="0.3")
    with Client(live[0], retry=FAST, transport=faulty) as c:
        t0 = time.monotonic()
        assert c.predict(CLASSIFIERS[0], "great")[0].label
        assert time.monotonic() - t0 >= 0.3
    with Client(live[0], retry=Retry(attempts=1), transport=Faulty(busy="/predict")) as c:
        with pytest.raises(Overloaded) as e:
            c.predict(CLASSIFIERS[0], "great")
        assert e.value.retry_after == 0.2


def test_session_limit_is_typed_with_retry_after(registry: Registry) -> None:
    app = create_app(
        Settings(models_dir=FIXTURE_MODELS, max_sessions=1), registry=registry, configure_logs=False
    )
    with serve_in_thread(app) as addr, Client(f"http://{addr}", retry=Retry(attempts=1)) as c:
        with c.session(LM), pytest.raises(SessionLimit) as e:
            c.session(LM)
        assert e.value.status == 429 and e.value.retry_after is not None


def test_unreachable_server_is_a_transport_error() -> None:
    retry = Retry(attempts=2, backoff_s=0.01)
    with Client("http://127.0.0.1:9", retry=retry) as c, pytest.raises(TransportError):
        c.models()


def test_retry_policy() -> None:
    r = Retry(attempts=3, backoff_s=0.01)
    req = httpx.Request("POST", "http://x/")
    lost = httpx.ReadError("reset", request=req)
    refused = httpx.ConnectError("refused", request=req)
    unsafe = Call("POST", "/x", resendable=False)
    assert r.after_exception(unsafe, lost, 0) is None  # may have been applied: never resent
    assert r.after_exception(unsafe, refused, 0) is not None  # never sent
    assert r.after_exception(Call("GET", "/x"), lost, 0) is not None
    assert r.after_exception(Call("GET", "/x"), lost, 2) is None  # attempts used up
    busy = error_from_body(503, {"error": {"code": "overloaded", "message": ""}}, 100.0)
    assert r.after_error(unsafe, busy, 0) == r.max_retry_after_s


def test_client_imports_without_server_dependencies() -> None:
    code = (
        "import sys, service.client\n"
        "bad = [m for m in ('fastapi', 'starlette', 'onnxruntime', 'numpy', 'pydantic', 'uvicorn')"
        " if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)
