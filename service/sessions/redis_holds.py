"""The leases this process holds on Redis sessions, and what was read with each (`RedisStore`'s
part): a lease is taken in the same call as the session's read and, for a request with an
`Idempotency-Key`, the record it would replay (`RedisLease.hold`'s `read`). The holder's first
`get` and `get_idempotent(key)` use them: only calls from the task holding the lease, and never
once the holder changed the session itself (`stale`). The holder's commit gives the lease up
in its own call (`for_commit`), as its last call under it."""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from service.sessions.redis_lease import Held, RedisLease


class _Unread(enum.Enum):
    NOT_READ = enum.auto()


# what `Holds.idempotent` answers for a record not read with the lease (read it from Redis)
NOT_READ: Literal[_Unread.NOT_READ] = _Unread.NOT_READ


@dataclass(slots=True)
class Holding:
    """A lease this process holds: the task holding it (only its calls use what was read
    with it), the lease, and the `Idempotency-Key` record read with it ((key, raw or None))."""

    task: asyncio.Task[Any] | None
    lease: Held
    idempotent: tuple[str, bytes | None] | None = None


class Holds:
    """The leases this process holds, by session."""

    def __init__(self, lease: RedisLease) -> None:
        self._lease = lease
        self._held: dict[str, Holding] = {}

    @contextlib.asynccontextmanager
    async def hold(
        self,
        session_id: str,
        keys: tuple[str, str, str],
        read: tuple[list[str], list[Any]],
        key: str | None,
    ) -> AsyncIterator[None]:
        """The lease (`keys`: lock, queue, waiters), granted with `read` run in the same call;
        `key`: the `Idempotency-Key` whose record `read` also reads (None: it does not)."""
        async with self._lease.hold(session_id, keys, read) as held:
            mine = Holding(asyncio.current_task(), held)
            if key is not None and held.read[0] == b"ok":
                mine.idempotent = (key, held.read[5])
            self._held[session_id] = mine
            try:
                yield
            finally:
                if self._held.get(session_id) is mine:
                    del self._held[session_id]

    def read(self, session_id: str) -> Any:
        """The session as read with this task's lease, once (None: read it from Redis)."""
        mine = self._mine(session_id)
        if mine is None or mine.lease.read is None:
            return None
        out, mine.lease.read = mine.lease.read, None
        return out

    def idempotent(self, session_id: str, key: str) -> bytes | Literal[_Unread.NOT_READ] | None:
        """`key`'s record (or None: there is none) as read with this task's lease, once;
        `NOT_READ` where it was not read with the lease (read it from Redis)."""
        mine = self._mine(session_id)
        if mine is None or mine.idempotent is None or mine.idempotent[0] != key:
            return NOT_READ
        raw, mine.idempotent = mine.idempotent[1], None
        return raw

    def stale(self, session_id: str) -> None:
        """A change by the lease's holder: what was read with the lease is out of date."""
        mine = self._mine(session_id)
        if mine is not None:
            mine.lease.read = mine.idempotent = None

    def for_commit(self, session_id: str) -> Held | None:
        """This task's lease on the session, which its commit gives up in the same call: from
        now on it is not renewed (a renewal racing the commit would find it gone and say it
        was lost); `kept` if the commit fails. None: not this task's lease to give up."""
        mine = self._mine(session_id)
        if mine is None:
            return None
        mine.lease.released = True
        return mine.lease

    @staticmethod
    def kept(lease: Held) -> None:
        """The commit that was to give `lease` up failed (whether it ran is unknown): the
        lock's exit releases it, as any holder's does."""
        lease.released = False

    def _mine(self, session_id: str) -> Holding | None:
        """The lease on the session that this task holds, if it does (and has not released)."""
        got = self._held.get(session_id)
        if got is None or got.task is not asyncio.current_task() or got.lease.released:
            return None
        return got
