"""The session store interface. In-memory here; a Redis implementation shares it.

Guarantees an implementation must give:
* `get` raises `SessionNotFound` / `SessionExpired` / `SessionEvicted` (never a fresh state) and
  refreshes the idle TTL;
* `commit` is compare-and-set: it writes only if the stored version equals `expected_version`
  (else `VersionConflict`), and writes the idempotency record in the same atomic step;
* `lock(id)` serializes operations on one session in arrival order (an asyncio lock in memory;
  a lease with expiry across replicas).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from service.errors import SessionLimit
from service.sessions.record import IdempotencyRecord, SessionRecord

Clock = Callable[[], float]  # seconds, monotonic enough for TTLs (injectable in tests)


def store_id(session_id: str, owner: str | None) -> str:
    """The store key of a caller's session id: the id itself for the anonymous owner, else
    `owner/id` ("/" is in neither an owner name nor a session id, so this cannot be forged)."""
    return session_id if owner is None else f"{owner}/{session_id}"


def public_id(stored: str) -> str:
    """The id a caller knows, from a store key."""
    return stored.rpartition("/")[2]


def global_limit(cap: int) -> SessionLimit:
    """The error every store raises at the live-session cap (`max_sessions`)."""
    return SessionLimit(f"the live-session cap ({cap}) is reached")


def owner_limit(cap: int) -> SessionLimit:
    """The error every store raises when an owner (API key) holds `cap` live sessions."""
    return SessionLimit(
        f"this API key holds {cap} live sessions (the per-key cap); delete some or let them expire"
    )


class LocalRecords(Protocol):
    """A store's records where they live in this process (memory): `get`, `commit` and
    `get_idempotent` as plain calls, which a feed makes without a coroutine each (the feed
    path's per-call cost is what bounds one engine process: docs/benchmarks.md)."""

    def get_now(self, session_id: str) -> SessionRecord: ...

    def commit_now(
        self,
        record: SessionRecord,
        expected_version: int,
        idempotency: tuple[str, IdempotencyRecord] | None = None,
    ) -> SessionRecord: ...

    def get_idempotent_now(self, session_id: str, key: str) -> IdempotencyRecord | None: ...


class SessionStore(Protocol):
    async def create(self, record: SessionRecord) -> None:
        """Insert a new session; `SessionExists` if the id is live, `SessionLimit` at the cap
        or when the record's owner already holds `max_per_owner` live sessions (sessions
        without an owner count only against the global cap)."""

    async def get(self, session_id: str) -> SessionRecord:
        """The live record (TTL refreshed) or a distinct not-found/expired/evicted error."""

    async def commit(
        self,
        record: SessionRecord,
        expected_version: int,
        idempotency: tuple[str, IdempotencyRecord] | None = None,
    ) -> SessionRecord:
        """Store `record` if the current version is `expected_version`; returns it with the
        expiry refreshed. A holder's commit is its last call under the session's lock: a store
        may give the lock up in the same call (Redis does, whatever the outcome)."""

    async def delete(self, session_id: str) -> None:
        """Remove a session (`SessionNotFound` if unknown)."""

    async def count(self) -> int:
        """Live sessions."""

    async def count_graph(self, model: str, sha256: str) -> int:
        """Live sessions on one graph of `model` (a version being unloaded drains them)."""

    async def get_idempotent(self, session_id: str, key: str) -> IdempotencyRecord | None:
        """A stored result for this session and key, if any and not expired."""

    async def put_idempotent(self, session_id: str, key: str, record: IdempotencyRecord) -> None:
        """Store a result without a state change (e.g. for a replayed delete)."""

    def lock(self, session_id: str, key: str | None = None) -> AbstractAsyncContextManager[None]:
        """Serialize operations on one session, first come first served. `key`: the
        `Idempotency-Key` the holder will look up (`get_idempotent`), which a store may read
        as it takes the lock (Redis: in the same call)."""

    # whether `lock_now` works: the lock is taken or queued for without I/O (in memory; not
    # a lease in Redis). A batch of feeds takes its sessions this way (`SessionService
    # .feed_batch`), which only a store with local locks is given.
    local_locks: bool

    @property
    def local(self) -> LocalRecords | None:
        """The same records without I/O (the same guarantees), or None where they are
        remote (Redis). A traced store's records its calls as spans for a sampled request, as
        its coroutines do (`TracedRecords`)."""

    def lock_now(self, session_id: str) -> asyncio.Future[None] | None:
        """Take the session's lock at once (None), or take its place in the session's queue
        at once (arrival order): the future resolves when it is this caller's turn. Held
        until `unlock`; a turn not waited for is given up with `abandon`."""

    def abandon(self, session_id: str, turn: asyncio.Future[None]) -> None:
        """Give up a turn from `lock_now` (released on, if it was already handed over)."""

    def unlock(self, session_id: str) -> None:
        """Release a lock taken by `lock_now`."""

    async def sweep(self) -> int:
        """Drop expired sessions and records; returns how many sessions went."""

    async def close(self) -> None:
        """Release connections."""
