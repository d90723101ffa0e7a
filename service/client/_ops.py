"""Every API operation, written once and without I/O: what it sends and what the answer means.

An operation is a generator (`Op`): it yields each `Call` it needs and is sent back the 2xx
response, or has the call's typed error thrown in at that `yield`; it returns the result.
`Client._run` drives it blocking and `AsyncClient._run` awaiting, each with its own transport,
so the two clients cannot drift apart in what they send, parse or recover from.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator
from typing import Any, TypeAlias, TypeVar

import httpx

from service.client._core import (
    Call,
    SamplingArgs,
    create_call,
    new_session_id,
    predict_call,
    session_call,
)
from service.client.errors import SessionExists, SessionGone
from service.client.types import FeedResult, Generation, Model, Output, SessionInfo

T = TypeVar("T")
Op: TypeAlias = Generator[Call, httpx.Response, T]


def models() -> Op[list[Model]]:
    r = yield Call("GET", "/v1/models")
    return [Model.parse(m) for m in r.json()["models"]]


def model(name: str) -> Op[Model]:
    r = yield Call("GET", f"/v1/models/{name}")
    return Model.parse(r.json())


def predict(model: str, texts: list[str] | str, top_k: int | None) -> Op[list[Output]]:
    batch = [texts] if isinstance(texts, str) else list(texts)
    r = yield predict_call(model, batch, top_k)
    return [o for o in map(Output.parse, r.json()["outputs"]) if o is not None]


def generation(call: Call, on_result: Callable[[Generation], None] | None = None) -> Op[Generation]:
    """A generate call without streaming; `on_result` sees the result first."""
    r = yield call
    out = Generation.parse(r.json())
    if on_result is not None:
        on_result(out)
    return out


def session_info(session_id: str) -> Op[SessionInfo]:
    r = yield Call("GET", f"/v1/sessions/{session_id}")
    return SessionInfo.parse(r.json())


def create_session(
    model: str | None, ttl_s: float | None, session_id: str | None, state: str | None
) -> Op[SessionInfo]:
    sid = session_id or new_session_id()
    try:
        r = yield create_call(model, sid, ttl_s, state)
    except SessionExists:
        if session_id is not None:
            raise
        # a 192-bit id of our own making exists: an earlier attempt of this very call created
        # it before its response was lost, and the retry ran into it
        return (yield from session_info(sid))
    return SessionInfo.parse(r.json())


class SessionOps:
    """What `Session` and `AsyncSession` share: the session's id, model and `version` (kept up
    to date by every operation that changes it), and the operations themselves."""

    def __init__(self, info: SessionInfo, delete_on_exit: bool) -> None:
        self.id = info.session_id
        self.model = info.model
        self.version = info.version
        self.delete_on_exit = delete_on_exit

    def _feed(
        self, text: str, top_k: int | None, expected_version: int | None, key: str | None
    ) -> Op[FeedResult]:
        body = {"text": text, "top_k": top_k, "expected_version": expected_version}
        r = yield session_call(self.id, "feed", body, key)
        out = FeedResult.parse(r.json())
        self.version = out.version
        return out

    def _reset(self, expected_version: int | None, key: str | None) -> Op[SessionInfo]:
        r = yield session_call(self.id, "reset", {"expected_version": expected_version}, key)
        info = SessionInfo.parse(r.json())
        self.version = info.version
        return info

    def _generate_call(
        self,
        prompt: str | None,
        stream: bool,
        expected_version: int | None,
        key: str | None,
        params: SamplingArgs,
    ) -> Call:
        body: dict[str, Any] = {"prompt": prompt, **params, "stream": stream}
        body["expected_version"] = expected_version
        return session_call(self.id, "generate", body, key)

    def _on_result(self, g: Generation) -> None:
        if g.version is not None:
            self.version = g.version

    def _info(self) -> Op[SessionInfo]:
        info = yield from session_info(self.id)
        self.version = info.version
        return info

    def _export_state(self) -> Op[str]:
        r = yield Call("GET", f"/v1/sessions/{self.id}/state")
        state: str = r.json()["state"]
        return state

    def _delete(self) -> Op[None]:
        with contextlib.suppress(SessionGone):  # one that is already gone counts as deleted
            yield Call("DELETE", f"/v1/sessions/{self.id}")
