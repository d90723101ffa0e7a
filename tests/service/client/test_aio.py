"""`service.client.AsyncClient` against a real uvicorn (the sync tests cover the shared logic)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from fastapi import FastAPI

from service.app import create_app
from service.client import AsyncClient, InvalidInput, Retry, SessionNotFound, VersionConflict
from service.engine.registry import Registry
from service.settings import Settings
from tests.conftest import FIXTURE_MODELS, LONG
from tests.servers import serve_in_thread
from tests.service.api.test_sessions import TEXT, chunks, close
from tests.service.client.test_sync import probs
from tests.service.conftest import CLASSIFIERS, LM


@pytest.fixture(scope="module")
def base_url(registry: Registry) -> Iterator[str]:
    app: FastAPI = create_app(
        Settings(models_dir=FIXTURE_MODELS, max_wait_ms=1.0, max_tokens_limit=LONG),
        registry=registry,
        configure_logs=False,
    )
    with serve_in_thread(app) as addr:
        yield f"http://{addr}"


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(base_url, retry=Retry(backoff_s=0.01)) as c:
        yield c


class DropOnce(httpx.AsyncBaseTransport):
    """Loses the first response on a path ending in `drop`, after the server handled it."""

    def __init__(self, drop: str) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.drop = drop
        self.keys: list[str | None] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.url.path.endswith(self.drop):
            self.keys.append(request.headers.get("idempotency-key"))
            if len(self.keys) == 1:
                await response.aread()
                await response.aclose()
                raise httpx.RemoteProtocolError("server disconnected", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize("model", CLASSIFIERS)
async def test_chunked_feed_equals_predict(client: AsyncClient, model: str) -> None:
    (whole,) = await client.predict(model, [TEXT["word"]])
    async with await client.session(model) as s:
        for piece in chunks(TEXT["word"], seed=5):
            out = await s.feed(piece)
        assert close(probs(out.output), probs(whole)) and s.version == 8


async def test_stream(client: AsyncClient) -> None:
    done = await client.generate(LM, "ROMEO:", max_tokens=15, seed=4)
    stream = client.generate(LM, "ROMEO:", max_tokens=15, seed=4, stream=True)
    tokens = [t async for t in stream]
    assert "".join(tokens) == done.text == (stream.result and stream.result.text)
    async with await client.session(LM) as s:
        async with s.generate("ROMEO:", stream=True, max_tokens=LONG, seed=4) as early:
            async for _ in early:
                break  # leaving the `async with` closes the stream: the server cancels it
        for _ in range(100):  # the session is free again once the server saw the close
            try:
                assert (await s.feed("x", expected_version=0)).version == 1
                break
            except VersionConflict:
                await asyncio.sleep(0.05)
        g = await s.generate(max_tokens=3, seed=1)
        assert g.version == s.version == 2


async def test_errors(client: AsyncClient) -> None:
    with pytest.raises(InvalidInput) as e:
        await client.generate(LM, "x", top_p=0)
    assert e.value.field == "top_p"
    with pytest.raises(SessionNotFound):
        await client.attach("missing")
    with pytest.raises(InvalidInput):
        async for _ in client.generate(LM, "x", stream=True, max_tokens=LONG + 1):
            pass


async def test_dropped_response_retried_with_same_key(base_url: str) -> None:
    transport = DropOnce("/feed")
    async with (
        AsyncClient(base_url, retry=Retry(backoff_s=0.01), transport=transport) as c,
        await c.session(LM) as s,
    ):
        out = await s.feed("abc")
        assert out.replayed and out.version == 1 and (await s.info()).tokens_seen == 3
    assert len(transport.keys) == 2 and transport.keys[0] == transport.keys[1]
