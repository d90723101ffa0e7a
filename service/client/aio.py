"""The asyncio client: `AsyncClient`, `AsyncSession`, `AsyncTokenStream` (mirrors `sync.py`).

One difference: `generate(..., stream=True)` is not awaited; it returns the stream at once and
the request starts on the first `async for` step."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from types import TracebackType
from typing import Any, Literal, Unpack, overload

import httpx

from service.client._core import (
    DEFAULT_TIMEOUT,
    Call,
    Retry,
    SamplingArgs,
    SSEParser,
    StreamState,
    create_call,
    error_of,
    generate_call,
    new_session_id,
    predict_call,
    session_call,
)
from service.client.errors import SessionExists, SessionGone, StreamInterrupted, TransportError
from service.client.types import FeedResult, Generation, Model, Output, SessionInfo


class AsyncClient:
    """`async with AsyncClient("http://127.0.0.1:8000") as c:` (or `await c.aclose()`)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        retry: Retry | None = None,
        headers: dict[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.retry = retry or Retry()
        self._http = httpx.AsyncClient(
            base_url=base_url, timeout=timeout, headers=headers, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- plumbing -------------------------------------------------------------------------------

    async def _send(self, call: Call) -> httpx.Response:
        attempt = 0
        while True:
            try:
                r = await self._http.request(
                    call.method, call.path, json=call.json, headers=call.headers
                )
            except httpx.TransportError as e:
                wait = self.retry.after_exception(call, e, attempt)
                if wait is None:
                    raise TransportError(f"{call.method} {call.path}: {e!r}") from e
            else:
                if r.is_success:
                    return r
                err = error_of(r)
                wait = self.retry.after_error(call, err, attempt)
                if wait is None:
                    raise err
            await asyncio.sleep(wait)
            attempt += 1

    async def _json(self, call: Call) -> Any:
        return (await self._send(call)).json()

    # -- the API ----------------------------------------------------------------------------------

    async def models(self) -> list[Model]:
        return [Model.parse(m) for m in (await self._json(Call("GET", "/v1/models")))["models"]]

    async def model(self, name: str) -> Model:
        return Model.parse(await self._json(Call("GET", f"/v1/models/{name}")))

    async def predict(
        self, model: str, texts: list[str] | str, *, top_k: int | None = None
    ) -> list[Output]:
        batch = [texts] if isinstance(texts, str) else list(texts)
        out = (await self._json(predict_call(model, batch, top_k)))["outputs"]
        return [o for o in map(Output.parse, out) if o is not None]

    @overload
    def generate(
        self,
        model: str,
        prompt: str | None = None,
        *,
        stream: Literal[False] = False,
        **params: Unpack[SamplingArgs],
    ) -> Awaitable[Generation]: ...

    @overload
    def generate(
        self,
        model: str,
        prompt: str | None = None,
        *,
        stream: Literal[True],
        **params: Unpack[SamplingArgs],
    ) -> AsyncTokenStream: ...

    def generate(
        self,
        model: str,
        prompt: str | None = None,
        *,
        stream: bool = False,
        **params: Unpack[SamplingArgs],
    ) -> Awaitable[Generation] | AsyncTokenStream:
        """`await c.generate(...)`, or `async for tok in c.generate(..., stream=True)`."""
        call = generate_call(model, prompt, stream, params)
        if stream:
            return AsyncTokenStream(self, call, None)
        return self._generation(call)

    async def _generation(self, call: Call) -> Generation:
        return Generation.parse(await self._json(call))

    async def session(
        self,
        model: str | None = None,
        *,
        ttl_s: float | None = None,
        session_id: str | None = None,
        state: str | None = None,
    ) -> AsyncSession:
        """`async with await c.session(model) as s:` (deleted on exit)."""
        sid = session_id or new_session_id()
        try:
            info = SessionInfo.parse(await self._json(create_call(model, sid, ttl_s, state)))
        except SessionExists:
            if session_id is not None:
                raise
            info = await self.session_info(sid)  # our lost first attempt made it (see sync.py)
        return AsyncSession(self, info)

    async def session_info(self, session_id: str) -> SessionInfo:
        return SessionInfo.parse(await self._json(Call("GET", f"/v1/sessions/{session_id}")))

    async def attach(self, session_id: str) -> AsyncSession:
        return AsyncSession(self, await self.session_info(session_id), delete_on_exit=False)


class AsyncSession:
    """A server-side recurrent state. `version` follows every committed change."""

    def __init__(
        self, client: AsyncClient, info: SessionInfo, *, delete_on_exit: bool = True
    ) -> None:
        self._client = client
        self.id = info.session_id
        self.model = info.model
        self.version = info.version
        self.delete_on_exit = delete_on_exit

    def __repr__(self) -> str:
        return f"AsyncSession({self.id!r}, model={self.model!r}, version={self.version})"

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.delete_on_exit:
            await self.delete()

    async def feed(
        self,
        text: str,
        *,
        top_k: int | None = None,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> FeedResult:
        body = {"text": text, "top_k": top_k, "expected_version": expected_version}
        call = session_call(self.id, "feed", body, idempotency_key)
        out = FeedResult.parse(await self._client._json(call))
        self.version = out.version
        return out

    async def reset(
        self, *, expected_version: int | None = None, idempotency_key: str | None = None
    ) -> SessionInfo:
        call = session_call(
            self.id, "reset", {"expected_version": expected_version}, idempotency_key
        )
        info = SessionInfo.parse(await self._client._json(call))
        self.version = info.version
        return info

    @overload
    def generate(
        self,
        prompt: str | None = None,
        *,
        stream: Literal[False] = False,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        **params: Unpack[SamplingArgs],
    ) -> Awaitable[Generation]: ...

    @overload
    def generate(
        self,
        prompt: str | None = None,
        *,
        stream: Literal[True],
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        **params: Unpack[SamplingArgs],
    ) -> AsyncTokenStream: ...

    def generate(
        self,
        prompt: str | None = None,
        *,
        stream: bool = False,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        **params: Unpack[SamplingArgs],
    ) -> Awaitable[Generation] | AsyncTokenStream:
        body: dict[str, Any] = {"prompt": prompt, **params, "stream": stream}
        body["expected_version"] = expected_version
        call = session_call(self.id, "generate", body, idempotency_key)
        if stream:
            return AsyncTokenStream(self._client, call, self._on_result)
        return self._generation(call)

    async def _generation(self, call: Call) -> Generation:
        out = Generation.parse(await self._client._json(call))
        self._on_result(out)
        return out

    def _on_result(self, g: Generation) -> None:
        if g.version is not None:
            self.version = g.version

    async def info(self) -> SessionInfo:
        info = await self._client.session_info(self.id)
        self.version = info.version
        return info

    async def export_state(self) -> str:
        out = await self._client._json(Call("GET", f"/v1/sessions/{self.id}/state"))
        state: str = out["state"]
        return state

    async def delete(self) -> None:
        with contextlib.suppress(SessionGone):
            await self._client._send(Call("DELETE", f"/v1/sessions/{self.id}"))


class AsyncTokenStream:
    """`async for` token texts; `result` afterwards. Leaving early: `await aclose()` (or use
    `async with`), which closes the connection and cancels the generation on the server."""

    def __init__(
        self, client: AsyncClient, call: Call, on_result: Callable[[Generation], None] | None
    ) -> None:
        self._client = client
        self._call = call
        self._on_result = on_result
        self._state = StreamState()
        self._it = self._run()

    @property
    def result(self) -> Generation | None:
        return self._state.result

    def __aiter__(self) -> AsyncTokenStream:
        return self

    async def __anext__(self) -> str:
        return await self._it.__anext__()

    async def __aenter__(self) -> AsyncTokenStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._it.aclose()

    async def text(self) -> str:
        async for _ in self:
            pass
        assert self.result is not None
        return self.result.text

    async def _run(self) -> AsyncGenerator[str, None]:
        call, http, retry, st = self._call, self._client._http, self._client.retry, self._state
        attempt = 0
        while True:
            try:
                async with http.stream(
                    call.method, call.path, json=call.json, headers=call.headers
                ) as r:
                    if not r.is_success:
                        await r.aread()
                        err = error_of(r)
                        wait = retry.after_error(call, err, attempt)
                        if wait is None:
                            raise err
                    else:
                        parser = SSEParser()
                        async for line in r.aiter_lines():
                            for event, data in parser.feed(line):
                                text = st.on_event(event, data)
                                if text:
                                    yield text
                        if st.result is None:
                            raise StreamInterrupted("the stream ended without a result")
                        if self._on_result is not None:
                            self._on_result(st.result)
                        return
            except httpx.TransportError as e:
                wait = None if st.yielded else retry.after_exception(call, e, attempt)
                if wait is None:
                    cls = StreamInterrupted if st.yielded else TransportError
                    raise cls(f"{call.method} {call.path}: {e!r}") from e
            await asyncio.sleep(wait)
            attempt += 1
