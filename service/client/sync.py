"""The blocking client: `Client`, `Session`, `TokenStream`.

Only the transport lives here (httpx.Client, `time.sleep`, iteration); what each call sends and
means is in `_ops.py`, the retry policy in `_retry.py`, the event stream in `_sse.py`."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
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


class Client:
    """`Client("http://127.0.0.1:8000")`; use as a context manager or call `close()`.

    `transport` replaces httpx's (tests, custom proxies); `retry` sets the retry policy."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        retry: Retry | None = None,
        headers: dict[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retry = retry or Retry()
        self._http = httpx.Client(
            base_url=base_url, timeout=timeout, headers=headers, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- plumbing -------------------------------------------------------------------------------

    def _send(self, call: Call) -> httpx.Response:
        attempts = Attempts(self.retry, call)
        while True:
            try:
                r = self._http.request(call.method, call.path, json=call.json, headers=call.headers)
            except httpx.TransportError as e:
                wait = attempts.after_exception(e)
            else:
                if r.is_success:
                    return r
                wait = attempts.after_response(r)
            time.sleep(wait)

    def _run(self, op: _ops.Op[T]) -> T:
        """Send each call `op` yields; give it the response or throw in the error."""
        try:
            call = next(op)
            while True:
                try:
                    response = self._send(call)
                except RnnserveError as e:
                    call = op.throw(e)
                else:
                    call = op.send(response)
        except StopIteration as done:
            result: T = done.value
            return result

    # -- the API ----------------------------------------------------------------------------------

    def models(self) -> list[Model]:
        return self._run(_ops.models())

    def model(self, name: str) -> Model:
        return self._run(_ops.model(name))

    def predict(
        self, model: str, texts: list[str] | str, *, top_k: int | None = None
    ) -> list[Output]:
        """Classify texts (label + probs) or list next-token probabilities, one per text."""
        return self._run(_ops.predict(model, texts, top_k))

    @overload
    def generate(
        self,
        model: str,
        prompt: str | None = None,
        *,
        stream: Literal[False] = False,
        **params: Unpack[SamplingArgs],
    ) -> Generation: ...

    @overload
    def generate(
        self,
        model: str,
        prompt: str | None = None,
        *,
        stream: Literal[True],
        **params: Unpack[SamplingArgs],
    ) -> TokenStream: ...

    def generate(
        self,
        model: str,
        prompt: str | None = None,
        *,
        stream: bool = False,
        **params: Unpack[SamplingArgs],
    ) -> Generation | TokenStream:
        """Generate from a fresh state. `stream=True`: an iterator of token texts."""
        call = generate_call(model, prompt, stream, params)
        if stream:
            return TokenStream(self, call, None)
        return self._run(_ops.generation(call))

    def session(
        self,
        model: str | None = None,
        *,
        ttl_s: float | None = None,
        session_id: str | None = None,
        state: str | None = None,
    ) -> Session:
        """Create a session (from an exported `state` to resume one). Deleted on `with` exit."""
        return Session(self, self._run(_ops.create_session(model, ttl_s, session_id, state)))

    def session_info(self, session_id: str) -> SessionInfo:
        return self._run(_ops.session_info(session_id))

    def attach(self, session_id: str) -> Session:
        """A `Session` handle on an existing session (not deleted on exit unless asked)."""
        return Session(self, self.session_info(session_id), delete_on_exit=False)


class Session(_ops.SessionOps):
    """A server-side recurrent state. `version` follows every committed change."""

    def __init__(self, client: Client, info: SessionInfo, *, delete_on_exit: bool = True) -> None:
        super().__init__(info, delete_on_exit)
        self._client = client

    def __repr__(self) -> str:
        return f"Session({self.id!r}, model={self.model!r}, version={self.version})"

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.delete_on_exit:
            self.delete()

    def feed(
        self,
        text: str,
        *,
        top_k: int | None = None,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> FeedResult:
        """Feed the next chunk; returns the running output on everything fed so far."""
        return self._client._run(self._feed(text, top_k, expected_version, idempotency_key))

    def reset(
        self, *, expected_version: int | None = None, idempotency_key: str | None = None
    ) -> SessionInfo:
        return self._client._run(self._reset(expected_version, idempotency_key))

    @overload
    def generate(
        self,
        prompt: str | None = None,
        *,
        stream: Literal[False] = False,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        **params: Unpack[SamplingArgs],
    ) -> Generation: ...

    @overload
    def generate(
        self,
        prompt: str | None = None,
        *,
        stream: Literal[True],
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        **params: Unpack[SamplingArgs],
    ) -> TokenStream: ...

    def generate(
        self,
        prompt: str | None = None,
        *,
        stream: bool = False,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        **params: Unpack[SamplingArgs],
    ) -> Generation | TokenStream:
        """Continue from the session's state; the generated text is committed to it."""
        call = self._generate_call(prompt, stream, expected_version, idempotency_key, params)
        if stream:
            return TokenStream(self._client, call, self._on_result)
        return self._client._run(_ops.generation(call, self._on_result))

    def info(self) -> SessionInfo:
        return self._client._run(self._info())

    def export_state(self) -> str:
        """The state as an opaque, checksummed base64 blob: `client.session(state=blob)` resumes it."""
        return self._client._run(self._export_state())

    def delete(self) -> None:
        """Delete the session; one that is already gone counts as deleted."""
        self._client._run(self._delete())


class TokenStream:
    """Iterate for token texts; `result` holds the finished `Generation` afterwards.

    Leaving early: `close()` (or use `with`) closes the connection, which cancels the
    generation on the server; a session then commits nothing."""

    def __init__(
        self, client: Client, call: Call, on_result: Callable[[Generation], None] | None
    ) -> None:
        self._client = client
        self._call = call
        self._state = StreamState(on_result)
        self._it = self._run()

    @property
    def result(self) -> Generation | None:
        return self._state.result

    def __iter__(self) -> TokenStream:
        return self

    def __next__(self) -> str:
        return next(self._it)

    def __enter__(self) -> TokenStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._it.close()

    def text(self) -> str:
        """Consume the rest and return all the text (the same as `result.text`)."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result.text

    def _run(self) -> Generator[str, None, None]:
        call, http, st = self._call, self._client._http, self._state
        attempts = Attempts(self._client.retry, call)
        while True:
            try:
                with http.stream(call.method, call.path, json=call.json, headers=call.headers) as r:
                    if r.is_success:
                        st.restart()
                        for line in r.iter_lines():
                            yield from st.feed(line)
                        st.end()
                        return
                    r.read()
                    wait = attempts.after_response(r)
            except httpx.TransportError as e:
                wait = attempts.after_exception(e, streamed=st.yielded > 0)
            time.sleep(wait)
