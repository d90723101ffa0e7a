"""`InProcessClient`: the `EngineClient` of an engine in this process (one process serving
everything; the engine process itself, behind `transport/host.py`; the tests)."""

from __future__ import annotations

import numpy as np

from service.engine.engine import Engine, Generation
from service.engine.stream_slots import StreamSlots
from service.errors import ServiceError
from service.protocol.client import STREAM_HOLD
from service.protocol.messages import (
    FeedResult,
    GenerateParams,
    Output,
    SequenceRef,
    SessionInfo,
    StateExport,
)
from service.sessions import SessionStore
from service.sessions.service import SessionService


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
