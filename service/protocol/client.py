"""The one interface the API layer has to the engine: `EngineClient`.

Every surface (native, WebSocket, v2, OpenAI, health, metrics) sends it the operations of
`ops.py` and gets their typed answers (`messages.py`; arrays for v2's tensors) or a generation
stream back; none of them touches the registry, a scheduler, the session store or a session
record. Two transports implement it: `engine/local.py` (the engine in this process: a call goes
straight to its handler) and `transport/remote.py` (the engine process, over ZeroMQ); a surface
cannot tell them apart.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, TypeVar

from service.protocol.catalog import Catalog
from service.protocol.events import TokenEvent
from service.protocol.messages import Finished, GenerationResult
from service.protocol.ops import Op, StreamOp

__all__ = ["EngineClient", "GenerationStream", "StreamHold", "TokenEvent"]

R = TypeVar("R")


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
    never waits). The engine may not have decided it yet: a generation opened under it
    (`EngineClient.open(op, hold)`) raises its refusal (`Overloaded`, `StreamLimit`) instead of
    starting, and `confirmed()` asks now, for a caller that must know before it answers (a
    WebSocket)."""

    async def confirmed(self) -> None: ...

    def widen(self, rows: int) -> None:
        """Hold `rows` decode rows in all (an OpenAI completion's `n` x prompts), asked before
        the request's first generation: in process it is decided now (raising the refusal),
        over the wire the engine decides it with that generation's frame."""
        ...

    def release(self) -> None: ...


class EngineClient(Protocol):
    catalog: Catalog  # the models served: manifests and tokenizers (the API tokenizes)

    @property
    def alive(self) -> bool:
        """False once the engine is known gone (its process died): liveness fails."""
        ...

    async def call(self, op: Op[R]) -> R:
        """Run `op`; its answer (`op.result_type()`), or its `ServiceError`."""
        ...

    async def open(self, op: StreamOp, hold: StreamHold | None = None) -> GenerationStream:
        """Start the generation `op` under the request's stream slot `hold` (refused with the
        slot's error, before anything runs, when the engine refused the slot). Errors known at
        the start (an unknown session, a bad prompt) raise here; later ones end the stream."""
        ...

    def hold_stream(self, owner: str | None, rows: int = 1) -> StreamHold:
        """A slot for one stream of `rows` decode rows (`engine/stream_slots.py`); never waits
        (see `StreamHold`)."""
        ...
