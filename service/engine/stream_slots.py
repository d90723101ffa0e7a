"""The replica's stream caps, owned by the engine: `max_open_streams` for all callers together and
`max_streams_per_key` per owner.

A stream (a generating request of any surface, a WebSocket connection) holds a slot from its
first generation (a WebSocket: from connecting) to its last byte. The count lives here, in the engine's process, and not in the API workers: under
`--workers N` each worker counting its own streams would admit N times each cap. A worker holds
a slot under an id of its own (`wire.SlotRef`, carried by the request's generations; a WebSocket
asks with `wire.HoldStream`) until it cancels that id, so a worker that dies releases its slots
the way it releases everything else (`EngineHost.forget_worker`). The engine decides a slot as it
reads the first frame naming it (`EngineHost._slot`).
"""

from __future__ import annotations

from collections import Counter

from service.errors import Overloaded, StreamLimit


class StreamSlots:
    def __init__(self, max_open: int, max_per_owner: int) -> None:
        self.max_open = max_open
        self.max_per_owner = max_per_owner
        self.open = 0
        self._owners: Counter[str] = Counter()  # owner -> open streams (keys on only)

    def acquire(self, owner: str | None, rows: int = 1, mine: int = 0) -> None:
        """Take `rows` slots for `owner` (None: keys off, only the replica's cap applies), or
        raise `Overloaded` (503, the replica is full) or `StreamLimit` (429, the key is). A
        request that decodes several rows at once (an OpenAI completion's `n` x prompts) takes
        one per row: the caps bound decode rows, not requests. `mine`: rows the same request
        holds already (when it widens its hold), for the message only."""
        if self.open + rows > self.max_open:
            raise Overloaded(
                f"{self.open - mine} streams are open on this server and this request needs "
                f"{mine + rows}; the limit is {self.max_open} (RNNSERVE_MAX_OPEN_STREAMS); "
                "retry later"
            )
        if owner is not None:
            held = self._owners[owner]
            if held + rows > self.max_per_owner:
                raise StreamLimit(
                    f"this request needs {mine + rows} streams (each generated sequence counts) "
                    f"and this API key has {held - mine} others open; the per-key limit is "
                    f"{self.max_per_owner}"
                )
            self._owners[owner] += rows
        self.open += rows

    def release(self, owner: str | None, rows: int = 1) -> None:
        self.open -= rows
        if owner is not None:
            self._owners[owner] -= rows
            if self._owners[owner] <= 0:
                del self._owners[owner]

    def held_by(self, owner: str) -> int:
        return self._owners[owner]
