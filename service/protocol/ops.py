"""The engine's operations: one frozen struct per thing the API asks of the engine, each naming
the type of its answer (`Op[R]`), or, for a generation, opening a stream (`StreamOp`).

An operation crosses to the engine process as it is (`transport/wire.py` sends any `Op`, and
decodes its answer as `result_type()`), and in one process goes straight to its handler
(`engine/local.py` dispatches on the struct's type). So a new operation is its struct here, its
handler (a method marked `@handles(TheOp)` on the engine or the session service) and the route
that sends it; nothing in between names it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any, ClassVar, Generic, TypeVar, get_args

import numpy as np

from service.protocol.messages import (
    FeedResult,
    GenerateParams,
    Message,
    Output,
    RepositoryEntry,
    SequenceOutput,
    SequenceRef,
    SessionInfo,
    StateExport,
)

R = TypeVar("R")


class Op(Message, Generic[R], frozen=True):
    """An operation whose answer is one `R`."""

    def texts(self) -> Iterable[tuple[str, str]]:
        """The strings it carries, each with the request field it came from (a string that
        cannot cross the wire is refused naming it)."""
        return ()

    @classmethod
    @functools.cache
    def result_type(cls) -> Any:
        for base in getattr(cls, "__orig_bases__", ()):
            if getattr(base, "__origin__", None) is Op:
                return get_args(base)[0]
        raise TypeError(f"{cls.__name__} does not name its result type")  # pragma: no cover


class StreamOp(Message, frozen=True):
    """An operation that opens a generation stream (`EngineClient.open`)."""

    streams: ClassVar[bool] = True

    def texts(self) -> Iterable[tuple[str, str]]:
        return ()

    def stops(self) -> tuple[str, ...]:
        """Its stop strings (a worker matches their text for a stream whose tokens it decodes)."""
        return ()


# -- the engine ---------------------------------------------------------------------------------


class Health(Op[dict[str, str]], frozen=True, tag="health"):
    """What keeps the engine from serving now (what -> why); empty when it serves: a model
    whose engine thread holds work and has not moved for `stall_timeout_s`."""


# -- the model repository (load, unload, index: `engine/repository.py`) -----------------------


class RepositoryIndex(Op[list[RepositoryEntry]], frozen=True, tag="repo-index"):
    """Every model version under the models folder, each with its state; `ready`: only those
    serving."""

    ready: bool = False


class LoadModel(Op[list[RepositoryEntry]], frozen=True, tag="repo-load"):
    """Load `name` (the versions its policy names, or `version`) from the models folder, beside
    what serves; `settings` (a settings.json object) go over the model's own file. Answers
    the model's versions once they serve; a failed load leaves what served as it was."""

    name: str
    version: str | None = None
    settings: dict[str, Any] | None = None

    def texts(self) -> Iterable[tuple[str, str]]:
        yield "model", self.name
        if self.version is not None:
            yield "version", self.version
        yield from _strings(self.settings, "settings")


class UnloadModel(Op[list[RepositoryEntry]], frozen=True, tag="repo-unload"):
    """Stop serving `name` (every version, or `version`): it takes no new work at once, its
    live sessions are served for up to `drain_s` (None: `RNNSERVE_UNLOAD_DRAIN_S`), then it
    goes and a session still on it answers 409 `model_unloaded` naming the version."""

    name: str
    version: str | None = None
    drain_s: float | None = None

    def texts(self) -> Iterable[tuple[str, str]]:
        yield "model", self.name
        if self.version is not None:
            yield "version", self.version


def _strings(value: Any, where: str) -> Iterable[tuple[str, str]]:
    """Every string in a JSON value (keys too), each named by its path."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield f"{where}.{k}", str(k)
            yield from _strings(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{where}[{i}]")


class Predict(Op[list[Output | None]], frozen=True, tag="predict"):
    """Each row of token ids from a fresh state: its output (None for an empty row). The API
    tokenizes (`ModelView.encode_full`): the engine only runs the model."""

    model: str
    rows: list[list[int]]
    top_k: int


class Logits(Op[np.ndarray], frozen=True, tag="logits"):
    """(B, K) float32: each row of ids from a fresh state (v2 inference)."""

    model: str
    rows: list[list[int]]


class ModelLoad(Message, frozen=True):
    queued: int  # prefill jobs waiting for the model's engine thread
    streams: int  # generations in its decode batch


class EngineLoad(Message, frozen=True):
    models: dict[str, ModelLoad]
    open_streams: int  # stream slots held (decode rows), every worker's
    max_open_streams: int  # RNNSERVE_MAX_OPEN_STREAMS


class Load(Op[EngineLoad], frozen=True, tag="load"):
    """The engine's load now: what a router or an autoscaler weighs a replica by."""


class Generate(StreamOp, frozen=True, tag="generate"):
    """A generation from a fresh state."""

    model: str
    params: GenerateParams

    def texts(self) -> Iterable[tuple[str, str]]:
        return _params_texts(self.params)

    def stops(self) -> tuple[str, ...]:
        return self.params.stop


# -- sessions (every rule lives behind this line: locks, versions, keys, TTLs, caps) ------------


class CreateSession(Op[SessionInfo], frozen=True, tag="create_session"):
    model: str | None
    session_id: str | None
    ttl_s: float | None
    state: bytes | None  # an exported state blob to start from
    owner: str | None


class GetSession(Op[SessionInfo], frozen=True, tag="get_session"):
    session_id: str
    owner: str | None


class DeleteSession(Op[None], frozen=True, tag="delete_session"):
    session_id: str
    owner: str | None


class Reset(Op[SessionInfo], frozen=True, tag="reset"):
    session_id: str
    expected_version: int | None
    key: str | None  # Idempotency-Key
    owner: str | None


class Feed(Op[FeedResult], frozen=True, tag="feed"):
    session_id: str
    text: str
    top_k: int
    expected_version: int | None
    key: str | None
    owner: str | None

    def texts(self) -> Iterable[tuple[str, str]]:
        return (("text", self.text),)


class SessionGenerate(StreamOp, frozen=True, tag="session_generate"):
    """A generation from a session's state, committed to it when the stream ends."""

    session_id: str
    params: GenerateParams
    expected_version: int | None
    key: str | None
    owner: str | None

    def texts(self) -> Iterable[tuple[str, str]]:
        return _params_texts(self.params)

    def stops(self) -> tuple[str, ...]:
        return self.params.stop


class ExportState(Op[StateExport], frozen=True, tag="export_state"):
    session_id: str
    owner: str | None


class SequenceStep(Op[SequenceOutput], frozen=True, tag="sequence_step"):
    """One v2 sequence request (`text` or token `ids`): logits (K,) on all of the sequence's
    input so far, and the version they came from."""

    model: str
    seq: SequenceRef
    text: str | None
    ids: list[int] | None
    owner: str | None

    def texts(self) -> Iterable[tuple[str, str]]:
        return () if self.text is None else (("TEXT", self.text),)


class LiveSessions(Op[int], frozen=True, tag="live_sessions"):
    """How many sessions the store holds."""


def _params_texts(p: GenerateParams) -> list[tuple[str, str]]:
    texts = [] if p.prompt is None else [("prompt", p.prompt)]
    return texts + [(f"stop[{i}]", t) for i, t in enumerate(p.stop)]


def operations() -> tuple[type[Op[Any]] | type[StreamOp], ...]:
    """Every operation (the wire decodes any of them)."""
    return (*Op.__subclasses__(), *StreamOp.__subclasses__())
