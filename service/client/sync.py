"""The blocking client: `Client`, `Session`, `TokenStream`."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Generator
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
from service.client.errors import (
    SessionExists,
    SessionGone,
    StreamInterrupted,
    TransportError,
)
from service.client.types import FeedResult, Generation, Model, Output, SessionInfo


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
        attempt = 0
        while True:
            try:
                r = self._http.request(call.method, call.path, json=call.json, headers=call.headers)
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
            time.sleep(wait)
            attempt += 1

    def _json(self, call: Call) -> Any:
        return self._send(call).json()

    def _stream(self, call: Call, on_result: Callable[[Generation], None] | None) -> TokenStream:
        return TokenStream(self, call, on_result)

    # -- the API ----------------------------------------------------------------------------------

    def models(self) -> list[Model]:
        return [Model.parse(m) for m in self._json(Call("GET", "/v1/models"))["models"]]

    def model(self, name: str) -> Model:
        return Model.parse(self._json(Call("GET", f"/v1/models/{name}")))

    def predict(
        self, model: str, texts: list[str] | str, *, top_k: int | None = None
    ) -> list[Output]:
        """Classify texts (label + probs) or list next-token probabilities, one per text."""
        batch = [texts] if isinstance(texts, str) else list(texts)
        out = self._json(predict_call(model, batch, top_k))["outputs"]
        return [o for o in map(Output.parse, out) if o is not None]

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
            return self._stream(call, None)
        return Generation.parse(self._json(call))

    def session(
        self,
        model: str | None = None,
        *,
        ttl_s: float | None = None,
        session_id: str | None = None,
        state: str | None = None,
    ) -> Session:
        """Create a session (from an exported `state` to resume one). Deleted on `with` exit."""
        sid = session_id or new_session_id()
        try:
            return Session(
                self, SessionInfo.parse(self._json(create_call(model, sid, ttl_s, state)))
            )
        except SessionExists:
            if session_id is not None:
                raise
            # a 192-bit id of our own making exists: an earlier attempt of this very call created
            # it before its response was lost, and the retry ran into it
            return Session(self, self.session_info(sid))

    def session_info(self, session_id: str) -> SessionInfo:
        return SessionInfo.parse(self._json(Call("GET", f"/v1/sessions/{session_id}")))

    def attach(self, session_id: str) -> Session:
        """A `Session` handle on an existing session (not deleted on exit unless asked)."""
        return Session(self, self.session_info(session_id), delete_on_exit=False)


class Session:
    """A server-side recurrent state. `version` follows every committed change."""

    def __init__(self, client: Client, info: SessionInfo, *, delete_on_exit: bool = True) -> None:
        self._client = client
        self.id = info.session_id
        self.model = info.model
        self.version = info.version
        self.delete_on_exit = delete_on_exit

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
        body = {"text": text, "top_k": top_k, "expected_version": expected_version}
        out = FeedResult.parse(
            self._client._json(session_call(self.id, "feed", body, idempotency_key))
        )
        self.version = out.version
        return out

    def reset(
        self, *, expected_version: int | None = None, idempotency_key: str | None = None
    ) -> SessionInfo:
        body = {"expected_version": expected_version}
        info = SessionInfo.parse(
            self._client._json(session_call(self.id, "reset", body, idempotency_key))
        )
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
        body: dict[str, Any] = {"prompt": prompt, **params, "stream": stream}
        body["expected_version"] = expected_version
        call = session_call(self.id, "generate", body, idempotency_key)
        if stream:
            return self._client._stream(call, self._on_result)
        out = Generation.parse(self._client._json(call))
        self._on_result(out)
        return out

    def _on_result(self, g: Generation) -> None:
        if g.version is not None:
            self.version = g.version

    def info(self) -> SessionInfo:
        info = self._client.session_info(self.id)
        self.version = info.version
        return info

    def export_state(self) -> str:
        """The state as an opaque, checksummed base64 blob: `client.session(state=blob)` resumes it."""
        out = self._client._json(Call("GET", f"/v1/sessions/{self.id}/state"))
        state: str = out["state"]
        return state

    def delete(self) -> None:
        """Delete the session; one that is already gone counts as deleted."""
        with contextlib.suppress(SessionGone):
            self._client._send(Call("DELETE", f"/v1/sessions/{self.id}"))


class TokenStream:
    """Iterate for token texts; `result` holds the finished `Generation` afterwards.

    Leaving early: `close()` (or use `with`) closes the connection, which cancels the
    generation on the server; a session then commits nothing."""

    def __init__(
        self, client: Client, call: Call, on_result: Callable[[Generation], None] | None
    ) -> None:
        self._client = client
        self._call = call
        self._on_result = on_result
        self._state = StreamState()
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
        call, http, retry, st = self._call, self._client._http, self._client.retry, self._state
        attempt = 0
        while True:
            try:
                with http.stream(call.method, call.path, json=call.json, headers=call.headers) as r:
                    if not r.is_success:
                        r.read()
                        err = error_of(r)
                        wait = retry.after_error(call, err, attempt)
                        if wait is None:
                            raise err
                    else:
                        parser = SSEParser()
                        for line in r.iter_lines():
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
            time.sleep(wait)
            attempt += 1
