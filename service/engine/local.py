"""`InProcessClient`: the `EngineClient` of an engine in this process (one process serving
everything; the engine process itself, behind `transport/host.py`; the tests). An operation goes
straight to its handler (`dispatch.py`): the engine's own below, the session rules' in
`sessions/service.py`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np

from service.engine.dispatch import Batcher, batchers, handlers, handles
from service.engine.engine import Engine
from service.engine.generation import BeforeCommit, Generation
from service.engine.stream import Route
from service.engine.stream_slots import StreamSlots
from service.errors import InvalidInput, ServiceError
from service.protocol.catalog import Catalog
from service.protocol.client import StreamHold
from service.protocol.messages import Output
from service.protocol.ops import (
    EngineLoad,
    Generate,
    Health,
    Load,
    Logits,
    ModelLoad,
    Op,
    Predict,
    StreamOp,
)
from service.sessions.service import SessionService

R = TypeVar("R")


class InProcessClient:
    """`EngineClient` over an engine in this process: plain calls, no copies."""

    def __init__(
        self, engine: Engine, sessions: SessionService, slots: StreamSlots, *parts: object
    ) -> None:
        """`parts`: more of the engine's parts with operations (the model repository)."""
        self.engine, self.sessions, self.slots = engine, sessions, slots
        self.catalog: Catalog = engine.catalog()
        engine.on_change.append(self._refresh)
        self.parts = (self, sessions, *parts)  # each with its operations' handlers
        self._handlers = handlers(*self.parts)
        self._batchers = batchers(*self.parts)

    @property
    def alive(self) -> bool:
        return True  # (this process is the engine's)

    def _refresh(self) -> None:
        self.catalog = self.engine.catalog()

    async def call(self, op: Op[R]) -> R:
        handler = self._handlers.get(type(op))
        if handler is None or isinstance(op, StreamOp):
            raise InvalidInput(f"the engine has no operation {type(op).__name__}")
        out: R = await handler(op)
        return out

    def batcher(self, kind: type) -> Batcher | None:
        """The batch handler of an operation, if it has one (`dispatch.handles_batch`)."""
        return self._batchers.get(kind)

    async def open(
        self,
        op: StreamOp,
        hold: StreamHold | None = None,
        *,
        before_commit: BeforeCommit | None = None,
        route: Route | None = None,
    ) -> Generation:
        """As `EngineClient.open`; `before_commit` is awaited after a session generation's last
        token and before it commits (the engine process waits there for its worker's client);
        `route` sends the tokens as arrays to a consumer that decodes them (`stream.Route`)."""
        if isinstance(hold, LocalHold) and hold.refusal is not None:
            raise hold.refusal
        handler = self._handlers.get(type(op))
        if handler is None or not isinstance(op, StreamOp):
            raise InvalidInput(f"the engine has no stream operation {type(op).__name__}")
        gen: Generation = await handler(op, before_commit, route)
        return gen

    async def open_many(
        self, ops: Sequence[Generate], routes: Sequence[Route | None]
    ) -> list[Generation | Exception]:
        """`open` of several stateless generations, started together (`generate_many`); each
        one's error in its place. The engine process's host opens what one worker asked for
        in one read this way; their stream slots are the host's to check."""
        asks = [(op.model, op.params, r) for op, r in zip(ops, routes, strict=True)]
        return await self.engine.generate_many(asks)

    def hold_stream(self, owner: str | None, rows: int = 1) -> LocalHold:
        return LocalHold(self.slots, owner, rows)

    # -- the engine's own operations (the session ones are the session service's)

    @handles(Health)
    async def _health(self, _op: Health) -> dict[str, str]:
        return self.engine.problems()

    @handles(Load)
    async def _load(self, _op: Load) -> EngineLoad:
        # (a version serving beside the default one is named name@version, as in the metrics)
        models = {
            sched.name: ModelLoad(sched.queue_depth, sched.active_streams)
            for sched in self.engine.schedulers.values()
        }
        return EngineLoad(models, self.slots.open, self.slots.max_open)

    @handles(Predict)
    async def _predict(self, op: Predict) -> list[Output | None]:
        return await self.engine.predict(op.model, op.rows, op.top_k)

    @handles(Logits)
    async def _logits(self, op: Logits) -> np.ndarray:
        return await self.engine.logits(op.model, op.rows)

    @handles(Generate)
    async def _generate(
        self, op: Generate, _before_commit: Any = None, route: Route | None = None
    ) -> Generation:
        return await self.engine.generate(op.model, op.params, route)


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
