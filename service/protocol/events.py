"""What a generation stream hands its consumer, on either side of the wire: `TokenEvent`s, the
bound on a backlog of them, and `events()` / `collect()` for anything that yields them in batches
(the engine's `Generation`, a worker's `RemoteGeneration`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from service.errors import ServiceError
from service.protocol.messages import Finished, GenerationResult, StepLogprob

# What a buffered token costs in memory, roughly (a TokenEvent, its text, and per logprob
# alternative a dict entry with a str key and a float): used to bound a stream's backlog.
EVENT_BYTES = 200
LOGPROB_BYTES = 160


class ClientTooSlow(ServiceError):
    """The consumer fell so far behind that the stream's backlog passed its bound."""

    status, code = 503, "client_too_slow"


class TokenEvent:
    """One generated token (a plain slotted class: cheap to make, one per stream per step)."""

    __slots__ = ("index", "logprob", "text", "token_id")

    def __init__(
        self, text: str, token_id: int, index: int, logprob: StepLogprob | None = None
    ) -> None:
        self.text = text  # text released by this token (stop-string lookahead may delay text)
        self.token_id = token_id
        self.index = index
        self.logprob = logprob


class EventsFromBatches:
    """`events()` and `collect()` for a generation that defines `batches()`: the engine's
    `Generation` and a worker's `RemoteGeneration` read them the same way."""

    def batches(self, keep_logprobs: bool = True) -> AsyncIterator[list[TokenEvent | Finished]]:
        raise NotImplementedError

    async def events(self, keep_logprobs: bool = True) -> AsyncIterator[TokenEvent | Finished]:
        async for batch in self.batches(keep_logprobs):
            for ev in batch:
                yield ev

    async def collect(self) -> GenerationResult:
        async for ev in self.events():
            if isinstance(ev, Finished):
                return ev.result
        raise RuntimeError("generation ended without a result")  # pragma: no cover
