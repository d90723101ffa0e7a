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

from service.protocol.catalog import Catalog
from service.protocol.events import TokenEvent
from service.protocol.messages import (
    FeedResult,
    Finished,
    GenerateParams,
    GenerationResult,
    Output,
    SequenceRef,
    SessionInfo,
    StateExport,
)

__all__ = [
    "STREAM_HOLD",
    "EngineClient",
    "GenerationStream",
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
