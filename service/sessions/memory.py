"""The embedded in-memory session store: TTL with an injectable clock, a cap, LRU order."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Literal

from service.errors import (
    SessionEvicted,
    SessionExists,
    SessionExpired,
    SessionNotFound,
    VersionConflict,
)
from service.sessions.record import IdempotencyRecord, SessionRecord
from service.sessions.store import Clock, global_limit, owner_limit

Gone = Literal["expired", "evicted"]
_MAX_GONE = 100_000


class MemoryStore:
    def __init__(
        self,
        max_sessions: int,
        evict: Literal["refuse", "lru"] = "refuse",
        expired_memory_s: float = 86400.0,
        clock: Clock = time.monotonic,
        on_change: Callable[[int], None] | None = None,
        on_evict: Callable[[str], None] | None = None,
        max_per_owner: int | None = None,
    ) -> None:
        self.max_sessions = max_sessions
        self.max_per_owner = max_per_owner  # per API key (owner None: only the global cap)
        self.evict = evict
        self.expired_memory_s = expired_memory_s
        self.clock = clock
        self._on_change = on_change
        self._on_evict = on_evict
        self._live: OrderedDict[str, SessionRecord] = OrderedDict()  # least recently used first
        self._gone: OrderedDict[str, tuple[Gone, float]] = OrderedDict()
        self._idem: dict[str, dict[str, IdempotencyRecord]] = {}
        self._locks: Users = {}  # sessions in use: the callers waiting for each
        self._owned: dict[str, set[str]] = {}  # owner -> live session ids

    # -- lifecycle helpers ------------------------------------------------------------------

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(len(self._live))

    def _own(self, rec: SessionRecord | None, add: bool) -> None:
        if rec is None or rec.owner is None:
            return
        ids = self._owned.setdefault(rec.owner, set())
        if add:
            ids.add(rec.id)
        else:
            ids.discard(rec.id)
            if not ids:
                del self._owned[rec.owner]

    def _bury(self, session_id: str, why: Gone) -> None:
        self._own(self._live.pop(session_id, None), add=False)
        self._idem.pop(session_id, None)
        self._gone[session_id] = (why, self.clock())
        self._gone.move_to_end(session_id)
        while len(self._gone) > _MAX_GONE:
            self._gone.popitem(last=False)
        if self._on_evict is not None:
            self._on_evict(why)
        self._changed()

    def _missing(self, session_id: str) -> Exception:
        gone = self._gone.get(session_id)
        if gone is None or self.clock() - gone[1] > self.expired_memory_s:
            return SessionNotFound(f"session {session_id!r} does not exist")
        if gone[0] == "evicted":
            return SessionEvicted(f"session {session_id!r} was evicted (live-session cap reached)")
        return SessionExpired(f"session {session_id!r} expired after its idle TTL")

    def _live_record(self, session_id: str) -> SessionRecord:
        rec = self._live.get(session_id)
        if rec is None:
            raise self._missing(session_id)
        if rec.expires_at <= self.clock():
            self._bury(session_id, "expired")
            raise self._missing(session_id)
        return rec

    def _make_room(self) -> None:
        if len(self._live) < self.max_sessions:
            return
        now = self.clock()
        for sid in [s for s, r in self._live.items() if r.expires_at <= now]:
            self._bury(sid, "expired")
        if len(self._live) < self.max_sessions:
            return
        if self.evict == "lru":
            for sid in self._live:
                if sid not in self._locks:  # never evict a session in use
                    self._bury(sid, "evicted")
                    return
        raise global_limit(self.max_sessions)

    # -- SessionStore -----------------------------------------------------------------------

    async def create(self, record: SessionRecord) -> None:
        if record.id in self._live:
            try:
                self._live_record(record.id)
            except (SessionExpired, SessionNotFound, SessionEvicted):
                pass
            else:
                raise SessionExists(f"session {record.id!r} already exists", field="session_id")
        if (
            self.max_per_owner is not None
            and record.owner is not None
            and len(self._owned.get(record.owner, ())) >= self.max_per_owner
        ):
            for sid in [
                s for s in self._owned[record.owner] if self._live[s].expires_at <= self.clock()
            ]:
                self._bury(sid, "expired")
            if len(self._owned.get(record.owner, ())) >= self.max_per_owner:
                raise owner_limit(self.max_per_owner)
        self._make_room()
        self._gone.pop(record.id, None)
        self._live[record.id] = record
        self._own(record, add=True)
        self._changed()

    async def get(self, session_id: str) -> SessionRecord:
        return self.get_now(session_id)

    async def commit(
        self,
        record: SessionRecord,
        expected_version: int,
        idempotency: tuple[str, IdempotencyRecord] | None = None,
    ) -> SessionRecord:
        return self.commit_now(record, expected_version, idempotency)

    # -- LocalRecords: the same, without a coroutine (a feed's record calls) ---------------

    @property
    def local(self) -> MemoryStore:
        return self

    def get_now(self, session_id: str) -> SessionRecord:
        rec = self._live_record(session_id)
        rec = rec.replace(expires_at=self.clock() + rec.ttl_s)
        self._live[session_id] = rec
        self._live.move_to_end(session_id)
        return rec

    def commit_now(
        self,
        record: SessionRecord,
        expected_version: int,
        idempotency: tuple[str, IdempotencyRecord] | None = None,
    ) -> SessionRecord:
        current = self._live_record(record.id)
        if current.version != expected_version:
            raise VersionConflict(
                f"session {record.id!r} is at version {current.version}, not {expected_version}",
                field="expected_version",
            )
        record = record.replace(expires_at=self.clock() + record.ttl_s)
        self._live[record.id] = record
        self._live.move_to_end(record.id)
        if idempotency is not None:
            self._idem.setdefault(record.id, {})[idempotency[0]] = idempotency[1]
        return record

    async def delete(self, session_id: str) -> None:
        self._own(self._live_record(session_id), add=False)
        del self._live[session_id]
        self._idem.pop(session_id, None)
        self._changed()

    async def count(self) -> int:
        return len(self._live)

    async def count_graph(self, model: str, sha256: str) -> int:
        now = self.clock()
        return sum(
            1
            for r in self._live.values()
            if r.model_sha256 == sha256 and r.model == model and r.expires_at > now
        )

    async def get_idempotent(self, session_id: str, key: str) -> IdempotencyRecord | None:
        return self.get_idempotent_now(session_id, key)

    def get_idempotent_now(self, session_id: str, key: str) -> IdempotencyRecord | None:
        rec = self._idem.get(session_id, {}).get(key)
        if rec is not None and rec.expires_at <= self.clock():
            del self._idem[session_id][key]
            return None
        return rec

    async def put_idempotent(self, session_id: str, key: str, record: IdempotencyRecord) -> None:
        self._idem.setdefault(session_id, {})[key] = record

    def lock(self, session_id: str, key: str | None = None) -> _SessionLock:
        return _SessionLock(self._locks, session_id)

    local_locks = True

    def lock_now(self, session_id: str) -> asyncio.Future[None] | None:
        return _enter(self._locks, session_id)

    def abandon(self, session_id: str, turn: asyncio.Future[None]) -> None:
        _abandon(self._locks, session_id, turn)

    def unlock(self, session_id: str) -> None:
        _release(self._locks, session_id)

    async def sweep(self) -> int:
        now = self.clock()
        expired = [s for s, r in self._live.items() if r.expires_at <= now and s not in self._locks]
        for sid in expired:
            self._bury(sid, "expired")
        while self._gone:
            sid, (_, at) = next(iter(self._gone.items()))
            if now - at <= self.expired_memory_s:
                break
            del self._gone[sid]
        for sid in list(self._idem):
            live = {k: v for k, v in self._idem[sid].items() if v.expires_at > now}
            if live:
                self._idem[sid] = live
            else:
                del self._idem[sid]
        return len(expired)

    async def close(self) -> None:
        return None


# The sessions in use: a session's entry is its callers waiting in line, first come first
# served, or None while nobody waits (nearly every feed finds its session free: no lock, no
# queue and no future is made for it; an `asyncio.Lock` per use cost a lock and its waiter set).
Users = dict[str, "deque[asyncio.Future[None]] | None"]


def _enter(locks: Users, sid: str) -> asyncio.Future[None] | None:
    """Take the session now (None), or queue for it now: the future resolves when it is this
    caller's turn (then it holds the session until `_release`; or `_abandon` it)."""
    if sid not in locks:
        locks[sid] = None
        return None
    line = locks[sid]
    if line is None:
        line = locks[sid] = deque()
    turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    line.append(turn)
    return turn


def _abandon(locks: Users, sid: str, turn: asyncio.Future[None]) -> None:
    """Give up a queued turn: if it was handed the session meanwhile, the session goes on to
    the next caller."""
    if turn.done() and not turn.cancelled():  # handed the session as it was given up
        _release(locks, sid)
        return
    turn.cancel()
    # (a turn cancelled while it waited may already be out of line: a release skipped it, and
    # the session since went free, or to a caller who found nobody waiting)
    line = locks.get(sid)
    if line:
        with contextlib.suppress(ValueError):
            line.remove(turn)


def _release(locks: Users, sid: str) -> None:
    line = locks[sid]
    while line:
        turn = line.popleft()
        if not turn.done():  # (one cancelled while it waited is skipped)
            turn.set_result(None)  # the session is the next caller's now
            return
    del locks[sid]


class _SessionLock:
    """`MemoryStore.lock`: a plain async context manager (a generator-based one cost ~8 % of
    the engine's Python per session step in its set-up alone). A session free is taken at once,
    with no future; a busy one queues, and a release hands it to the first caller still
    waiting."""

    __slots__ = ("_locks", "_sid")

    def __init__(self, locks: Users, sid: str) -> None:
        self._locks, self._sid = locks, sid

    async def __aenter__(self) -> None:
        turn = _enter(self._locks, self._sid)
        if turn is None:
            return
        try:
            await turn
        except BaseException:
            _abandon(self._locks, self._sid, turn)
            raise

    async def __aexit__(self, *exc: object) -> None:
        _release(self._locks, self._sid)
