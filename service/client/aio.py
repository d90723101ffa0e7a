"""The asyncio client: `AsyncClient`, `AsyncSession`, `AsyncTokenStream` (mirrors `sync.py`).

One difference: `generate(..., stream=True)` is not awaited; it returns the stream at once and
the request starts on the first `async for` step."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from types import TracebackType
from typing import Literal, TypeVar, Unpack, overload

import httpx

from service.client import _ops
from service.client._core import DEFAULT_TIMEOUT, Call, SamplingArgs, generate_call
from service.client._retry import Attempts, Retry
from service.client._sse import StreamState
from service.client.errors import RnnserveError
from service.client.types import FeedResult, Generation, Model, Output, SessionInfo

T = TypeVar("T")


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
        attempts = Attempts(self.retry, call)
        while True:
            try:
                r = await self._http.request(
                    call.method, call.path, json=call.json, headers=call.headers
                )
            except httpx.TransportError as e:
                wait = attempts.after_exception(e)
            else:
                if r.is_success:
                    return r
                wait = attempts.after_response(r)
            await asyncio.sleep(wait)

    async def _run(self, op: _ops.Op[T]) -> T:
        """Send each call `op` yields; give it the response or throw in the error."""
        try:
            call = next(op)
            while True:
                try:
                    response = await self._send(call)
                except RnnserveError as e:
                    call = op.throw(e)
                else:
                    call = op.send(response)
        except StopIteration as done:
            result: T = done.value
            return result

    # -- the API ----------------------------------------------------------------------------------

    async def models(self) -> list[Model]:
        return await self._run(_ops.models())

    async def model(self, name: str) -> Model:
        return await self._run(_ops.model(name))

    async def predict(
        self, model: str, texts: list[str] | str, *, top_k: int | None = None
    ) -> list[Output]:
        return await self._run(_ops.predict(model, texts, top_k))

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
        return self._run(_ops.generation(call))

    async def session(
        self,
        model: str | None = None,
        *,
        ttl_s: float | None = None,
        session_id: str | None = None,
        state: str | None = None,
    ) -> AsyncSession:
        """`async with await c.session(model) as s:` (deleted on exit)."""
        info = await self._run(_ops.create_session(model, ttl_s, session_id, state))
        return AsyncSession(self, info)

    async def session_info(self, session_id: str) -> SessionInfo:
        return await self._run(_ops.session_info(session_id))

    async def attach(self, session_id: str) -> AsyncSession:
        return AsyncSession(self, await self.session_info(session_id), delete_on_exit=False)


class AsyncSession(_ops.SessionOps):
    """A server-side recurrent state. `version` follows every committed change."""

    def __init__(
        self, client: AsyncClient, info: SessionInfo, *, delete_on_exit: bool = True
    ) -> None:
        super().__init__(info, delete_on_exit)
        self._client = client

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
        return await self._client._run(self._feed(text, top_k, expected_version, idempotency_key))

    async def reset(
        self, *, expected_version: int | None = None, idempotency_key: str | None = None
    ) -> SessionInfo:
        return await self._client._run(self._reset(expected_version, idempotency_key))

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
        call = self._generate_call(prompt, stream, expected_version, idempotency_key, params)
        if stream:
            return AsyncTokenStream(self._client, call, self._on_result)
        return self._client._run(_ops.generation(call, self._on_result))

    async def info(self) -> SessionInfo:
        return await self._client._run(self._info())

    async def export_state(self) -> str:
        return await self._client._run(self._export_state())

    async def delete(self) -> None:
        await self._client._run(self._delete())


class AsyncTokenStream:
    """`async for` token texts; `result` afterwards. Leaving early: `await aclose()` (or use
    `async with`), which closes the connection and cancels the generation on the server."""

    def __init__(
        self, client: AsyncClient, call: Call, on_result: Callable[[Generation], None] | None
    ) -> None:
        self._client = client
        self._call = call
        self._state = StreamState(on_result)
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
        call, http, st = self._call, self._client._http, self._state
        attempts = Attempts(self._client.retry, call)
        while True:
            try:
                async with http.stream(
                    call.method, call.path, json=call.json, headers=call.headers
                ) as r:
                    if r.is_success:
                        st.restart()
                        async for line in r.aiter_lines():
                            for text in st.feed(line):
                                yield text
                        st.end()
                        return
                    await r.aread()
                    wait = attempts.after_response(r)
            except httpx.TransportError as e:
                wait = attempts.after_exception(e, streamed=st.yielded > 0)
            await asyncio.sleep(wait)
