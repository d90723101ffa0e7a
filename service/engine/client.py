"""The one interface the API layer has to the engine: `EngineClient`.

Every surface (native, WebSocket, v2, OpenAI, health, metrics) goes through it and gets the typed
messages of `protocol.py` (or, for v2's tensors, arrays) back; none of them touches the registry,
a scheduler, the session store or a session record. `InProcessClient` is the transport where the
engine runs in the API's own process (one process serving everything; the tests). A transport to
an engine in another process implements the same interface.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Protocol

import numpy as np

from service.engine.catalog import Catalog
from service.engine.engine import Engine, Generation
from service.engine.protocol import (
    FeedResult,
    Finished,
    GenerateParams,
    GenerationResult,
    Output,
    SequenceRef,
    SessionInfo,
    StateExport,
)
from service.engine.session_ops import SessionService
from service.engine.sessions import SessionStore
from service.engine.stream import TokenEvent
from service.engine.stream_slots import StreamSlots
from service.errors import ServiceError

__all__ = [
    "STREAM_HOLD",
    "EngineClient",
    "GenerationStream",
    "InProcessClient",
    "StreamHold",
    "TokenEvent",
]


class GenerationStream(Protocol):
    """A running generation, as a surface consumes it. `aclose()` always: it cancels the
    generation if it is still running and releases what it holds (a session's lock)."""

    def batches(self, keep_logprobs: bool = True) -> AsyncIterator[list[TokenEvent | Finished]]:
        """The tokens ready at each wake-up; the last batch ends with `Finished`. A failure
        raises after the tokens that preceded it."""
        ...

    def events(self, keep_logprobs: bool = True) -> AsyncIterator[TokenEvent | Finished]: ...

    async def collect(self) -> GenerationResult: ...

    async def aclose(self) -> None: ...


class StreamHold(Protocol):
    """A stream slot from `EngineClient.hold_stream`, held until `release()` (exactly once; it
    never waits). The engine may not have decided it yet: a generation started under it
    (`STREAM_HOLD`) raises its refusal (`Overloaded`, `StreamLimit`) instead of starting, and
    `confirmed()` asks now, for a caller that must know before it answers (a WebSocket)."""

    async def confirmed(self) -> None: ...

    def widen(self, rows: int) -> None:
        """Hold `rows` decode rows in all (an OpenAI completion's `n` x prompts), asked before
        the request's first generation: in process it is decided now (raising the refusal),
        over the wire the engine decides it with that generation's frame."""
        ...

    def release(self) -> None: ...


# The stream slot of the request being served (set by `middleware/limits.py`). A generation
# started under a slot the engine refused never starts: in process the client checks it, over
# the wire the `Generate` carries the slot (`wire.SlotRef`) and the engine takes it as it reads
# the frame, so an HTTP stream spends no round trip (and no frame of its own) on its slot.
STREAM_HOLD: ContextVar[StreamHold | None] = ContextVar("rnnserve_stream_hold", default=None)


class EngineClient(Protocol):
    catalog: Catalog

    # -- admission
    def hold_stream(self, owner: str | None, rows: int = 1) -> StreamHold:
        """A slot for one stream of `rows` decode rows (`stream_slots.py`); never waits (see
        `StreamHold`)."""
        ...

    async def health(self) -> dict[str, str]:
        """What keeps the engine from serving now (what -> why); empty when it serves."""
        ...

    # -- stateless
    async def predict(self, model: str, inputs: list[str], top_k: int) -> list[Output | None]: ...

    async def logits(self, model: str, rows: list[list[int]]) -> np.ndarray:
        """(B, K) float32: each row of ids from a fresh state."""
        ...

    async def generate(self, model: str, params: GenerateParams) -> GenerationStream: ...

    # -- sessions (every rule lives behind this line: locks, versions, keys, TTLs, caps)
    async def create_session(
        self,
        model: str | None,
        session_id: str | None,
        ttl_s: float | None,
        state: bytes | None,
        owner: str | None,
    ) -> SessionInfo: ...

    async def get_session(self, session_id: str, owner: str | None) -> SessionInfo: ...

    async def delete_session(self, session_id: str, owner: str | None) -> None: ...

    async def reset(
        self, session_id: str, expected_version: int | None, key: str | None, owner: str | None
    ) -> SessionInfo: ...

    async def feed(
        self,
        session_id: str,
        text: str,
        top_k: int,
        expected_version: int | None,
        key: str | None,
        owner: str | None,
    ) -> FeedResult: ...

    async def session_generate(
        self,
        session_id: str,
        params: GenerateParams,
        expected_version: int | None,
        key: str | None,
        owner: str | None,
    ) -> GenerationStream: ...

    async def export_state(self, session_id: str, owner: str | None) -> StateExport: ...

    async def sequence_step(
        self,
        model: str,
        seq: SequenceRef,
        text: str | None,
        ids: list[int] | None,
        owner: str | None,
    ) -> np.ndarray:
        """One v2 sequence request: logits (K,) on all of the sequence's input so far."""
        ...

    async def live_sessions(self) -> int: ...


class InProcessClient:
    """`EngineClient` over an engine in this process: plain calls, no copies."""

    def __init__(
        self, engine: Engine, sessions: SessionService, store: SessionStore, slots: StreamSlots
    ) -> None:
        self.engine, self.sessions, self.store, self.slots = engine, sessions, store, slots
        self.catalog = engine.registry.catalog()

    def hold_stream(self, owner: str | None, rows: int = 1) -> LocalHold:
        return LocalHold(self.slots, owner, rows)

    async def health(self) -> dict[str, str]:
        return self.engine.problems()

    async def predict(self, model: str, inputs: list[str], top_k: int) -> list[Output | None]:
        return await self.engine.predict(model, inputs, top_k)

    async def logits(self, model: str, rows: list[list[int]]) -> np.ndarray:
        return await self.engine.logits(model, rows)

    async def generate(self, model: str, params: GenerateParams) -> Generation:
        _require_slot()
        return await self.engine.generate(model, params)

    async def create_session(
        self,
        model: str | None,
        session_id: str | None,
        ttl_s: float | None,
        state: bytes | None,
        owner: str | None,
    ) -> SessionInfo:
        return await self.sessions.create(model, session_id, ttl_s, state, owner)

    async def get_session(self, session_id: str, owner: str | None) -> SessionInfo:
        return await self.sessions.get(session_id, owner)

    async def delete_session(self, session_id: str, owner: str | None) -> None:
        await self.sessions.delete(session_id, owner)

    async def reset(
        self, session_id: str, expected_version: int | None, key: str | None, owner: str | None
    ) -> SessionInfo:
        return await self.sessions.reset(session_id, expected_version, key, owner)

    async def feed(
        self,
        session_id: str,
        text: str,
        top_k: int,
        expected_version: int | None,
        key: str | None,
        owner: str | None,
    ) -> FeedResult:
        return await self.sessions.feed(session_id, text, top_k, expected_version, key, owner)

    async def session_generate(
        self,
        session_id: str,
        params: GenerateParams,
        expected_version: int | None,
        key: str | None,
        owner: str | None,
    ) -> Generation:
        _require_slot()
        return await self.sessions.open_generation(session_id, params, expected_version, key, owner)

    async def export_state(self, session_id: str, owner: str | None) -> StateExport:
        return await self.sessions.export_state(session_id, owner)

    async def sequence_step(
        self,
        model: str,
        seq: SequenceRef,
        text: str | None,
        ids: list[int] | None,
        owner: str | None,
    ) -> np.ndarray:
        m = self.engine.model(model)
        return await self.sessions.sequence_step(m, seq, text, ids, owner)

    async def live_sessions(self) -> int:
        return await self.store.count()


def _require_slot() -> None:
    hold = STREAM_HOLD.get()
    if isinstance(hold, LocalHold) and hold.refusal is not None:
        raise hold.refusal


class LocalHold:
    """A slot taken (or refused: `refusal`) at once, in this process."""

    __slots__ = ("_owner", "_rows", "_slots", "refusal")

    def __init__(self, slots: StreamSlots, owner: str | None, rows: int = 1) -> None:
        self._owner = owner
        self._rows = rows
        self._slots: StreamSlots | None = None
        self.refusal: ServiceError | None = None
        try:
            slots.acquire(owner, rows)
            self._slots = slots
        except ServiceError as e:
            self.refusal = e

    async def confirmed(self) -> None:
        if self.refusal is not None:
            raise self.refusal

    def widen(self, rows: int) -> None:
        if self.refusal is not None:
            raise self.refusal
        if self._slots is not None and rows > self._rows:
            # refused: it still holds its first `_rows`
            self._slots.acquire(self._owner, rows - self._rows, mine=self._rows)
            self._rows = rows

    def release(self) -> None:
        if self._slots is not None:
            self._slots.release(self._owner, self._rows)
            self._slots = None
