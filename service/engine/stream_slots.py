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

    def acquire(self, owner: str | None) -> None:
        """Take a slot for `owner` (None: keys off, only the replica's cap applies), or raise
        `Overloaded` (503, the replica is full) or `StreamLimit` (429, the key is)."""
        if self.open >= self.max_open:
            raise Overloaded(
                f"{self.max_open} streams are open on this server "
                "(RNNSERVE_MAX_OPEN_STREAMS); retry later"
            )
        if owner is not None:
            if self._owners[owner] >= self.max_per_owner:
                raise StreamLimit(
                    f"this API key has {self.max_per_owner} streams open (the per-key limit)"
                )
            self._owners[owner] += 1
        self.open += 1

    def release(self, owner: str | None) -> None:
        self.open -= 1
        if owner is not None:
            self._owners[owner] -= 1
            if self._owners[owner] <= 0:
                del self._owners[owner]

    def held_by(self, owner: str) -> int:
        return self._owners[owner]
