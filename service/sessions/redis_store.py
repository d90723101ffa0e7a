"""The Redis session store: any replica serves any session (redis-py asyncio; one Redis primary, or
a Redis Cluster with `cluster=True`: `Layout` says where the keys go there). Its parts: how a
record is written (`redis_codec.py`), what a Redis failure is to the caller (`redis_errors.py`),
the Lua scripts (`redis_scripts.py`), the lease (`redis_lease.py`) and what was read with the
leases this process holds (`redis_holds.py`), the connections (`redis_clients.py`),
acknowledged writes (`redis_wait.py`) and the live counts behind the caps (`redis_counts.py`).

Keys on one primary (the id in a hash tag, so one session's keys share a slot):

    {p}{<id>}:s     HASH  v=version, st=state blob, m=meta JSON, t=idle TTL ms,   PEXPIRE = idle TTL
                          w=nonce of the last write
    {p}{<id>}:g     STR   "live" | "evicted": tells expired/evicted from unknown  TTL + expired_memory_s
    {p}{<id>}:i     HASH  Idempotency-Key -> "<expires_at_ms>|<JSON record>"     its own TTL
    {p}{<id>}:lock  STR   the lease holder's token                               PEXPIRE = lease
    {p}{<id>}:q/:w  ZSET/HASH  waiters in arrival order / their liveness deadlines
    {p}live         ZSET  id -> expiry ms: live count, the cap, LRU-by-expiry eviction
    {p}own:<owner>  ZSET  id -> expiry ms of one owner's (API key's) sessions: the per-key cap;
                          the session hash's field `o` names it           PEXPIRE = latest expiry

`st` is the portable state blob (`blob.encode_state`: magic, format, JSON header with model sha256,
version, pending text, dtypes and shapes, raw little-endian arrays, sha256). Redis keeps the TTLs;
every multi-key change is one Lua script (`redis_scripts.py`), so it is atomic.

Guarantees:
* commit is compare-and-set on `v` inside Lua: a state advances at most once per version, whatever
  replicas, leases or network retries do (the client's own retry of a commit whose reply was lost
  is recognised by a per-call nonce and succeeds instead of conflicting);
* the live-session cap and the per-owner cap are counted and checked inside the create script:
  replicas together never exceed either; delete, eviction and expiry free an owner's slot (on a
  cluster they are checked against the counts summed over the buckets just before: creates
  racing at a cap can pass it by as many as race);
* with `wait_replicas`, a change is answered only once that many replicas have it (`WAIT`, on
  the script's own connection), so a failover loses nothing that was acknowledged;
* `lock(id)` is a lease (`redis_lease.py`) renewed while held, granted in arrival order across
  replicas; a holder that dies (kill -9) blocks the session for at most one lease. Mutual
  exclusion is for liveness only: if a lease is ever lost (pause longer than the lease,
  failover), CAS still refuses the stale writer with `VersionConflict`, so no update is lost and
  none is applied twice;
* a step is two calls to Redis: the lease is taken with the session's read and, given the
  request's `Idempotency-Key` (`lock(id, key)`), the record it would replay (the holder's first
  `get` and `get_idempotent(key)` use them, unless it changed the session since), and the
  holder's `commit` gives the lease up in its own script (the next caller is granted as soon as
  the commit is done);
* no local state cache: every read sees the committed version;
* Redis unreachable, hung, loading, read-only or out of memory -> `StoreUnavailable` (503
  `store_unavailable`, Retry-After) within one deadline per call (`socket_timeout_s`: connect,
  read and retry together); a request that fails leaves no lease behind (`redis_lease.Janitor`);
  connections are re-made on the next call, so recovery is automatic.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal

from redis.asyncio import Redis, RedisCluster

from service.errors import (
    SessionEvicted,
    SessionExists,
    SessionExpired,
    SessionNotFound,
    StoreUnavailable,
    VersionConflict,
)
from service.sessions import redis_scripts as lua
from service.sessions.record import IdempotencyRecord, SessionRecord
from service.sessions.redis_clients import connect
from service.sessions.redis_codec import (
    decode_idempotent,
    decode_record,
    encode_idempotent,
    encode_record,
)
from service.sessions.redis_counts import LiveCounts
from service.sessions.redis_errors import store_errors
from service.sessions.redis_holds import NOT_READ, Holds
from service.sessions.redis_layout import CLUSTER_BUCKETS, Layout
from service.sessions.redis_lease import RedisLease
from service.sessions.redis_scripts import ms
from service.sessions.redis_wait import ReplicaWait
from service.sessions.store import Clock, global_limit, owner_limit


class RedisStore:
    """`SessionStore` on one Redis primary (or a Sentinel/managed failover pair), or on a Redis
    Cluster (`cluster=True`; see `Layout` and docs/deploy.md for what changes)."""

    def __init__(
        self,
        url: str,
        max_sessions: int,
        evict: Literal["refuse", "lru"] = "refuse",
        expired_memory_s: float = 86400.0,
        *,
        key_prefix: str = "rnnserve:",
        lock_lease_s: float = 5.0,
        lock_poll_max_s: float = 0.025,
        socket_timeout_s: float = 2.0,
        clock: Clock = time.time,
        on_change: Callable[[int], None] | None = None,
        on_evict: Callable[[str], None] | None = None,
        client: Redis | RedisCluster | None = None,
        max_per_owner: int | None = None,
        cluster: bool = False,
        wait_replicas: int = 0,
        wait_timeout_s: float = 0.5,
        sentinels: list[tuple[str, int]] | None = None,
        sentinel_master: str = "mymaster",
    ) -> None:
        self.max_sessions = max_sessions
        self.max_per_owner = max_per_owner  # per API key (owner None: only the global cap)
        self.evict = evict
        self.expired_memory_s = expired_memory_s
        self.prefix = key_prefix
        self.deadline_s = socket_timeout_s  # one bound per store call, whatever Redis does
        self.clock = clock  # wall clock, for idempotency expiry (shared by replicas)
        self._on_change = on_change
        self._on_evict = on_evict
        self.cluster = cluster
        # a state change is answered only once this many replicas have it (`WAIT`): what a
        # failover then loses was never acknowledged (docs/reliability.md)
        self.wait_replicas, self.wait_timeout_s = wait_replicas, wait_timeout_s
        self.layout = Layout(key_prefix, CLUSTER_BUCKETS if cluster else None)
        # `WAIT` pipelines go down connections that never resend (`redis_wait.py` says why)
        self._r, wait_client = (
            (client, client)
            if client is not None
            else connect(
                url,
                socket_timeout_s,
                cluster=cluster,
                sentinels=sentinels,
                sentinel_master=sentinel_master,
                wait_replicas=wait_replicas,
            )
        )
        self._wait = ReplicaWait(
            self._r, wait_client, wait_replicas, wait_timeout_s, socket_timeout_s, cluster
        )
        reg = self._r.register_script
        self._create, self._get, self._commit = reg(lua.CREATE), reg(lua.GET), reg(lua.COMMIT)
        self._put_idem, self._delete = reg(lua.PUT_IDEM), reg(lua.DELETE)
        self._sweep, self._evict = reg(lua.SWEEP), reg(lua.EVICT)
        self._get_idem = reg(lua.GET_IDEM)
        self._lease = RedisLease(self._r, self._run, lock_lease_s, lock_poll_max_s, lua.READ)
        self._holds = Holds(self._lease)  # and what was read with each (`redis_holds.py`)
        self._counts = LiveCounts(
            self._r,
            self.layout,
            self._run,
            self._sweep,
            self._evict,
            clock,
            socket_timeout_s,
            expired_memory_s,
            on_evict,
        )

    # -- keys ------------------------------------------------------------------

    def _k(self, session_id: str, kind: str) -> str:
        return self.layout.key(session_id, kind)

    def _keys(self, session_id: str) -> list[str]:
        return [
            self._k(session_id, "s"),
            self._k(session_id, "g"),
            self._k(session_id, "i"),
            self.layout.live(session_id),
        ]

    def _missing(self, session_id: str, marker: bytes) -> Exception:
        if marker == b"evicted":
            return SessionEvicted(f"session {session_id!r} was evicted (live-session cap reached)")
        if marker == b"live":
            return SessionExpired(f"session {session_id!r} expired after its idle TTL")
        return SessionNotFound(f"session {session_id!r} does not exist")

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        async with store_errors(self.deadline_s):
            return await script(keys=keys, args=args)

    async def _write(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """`_run` for a script that changes a session: with `wait_replicas`, followed on the
        same connection by `WAIT`, and a change it made refused (503, Retry-After) unless
        enough replicas have it in time. The change itself stands on the primary: a client's
        retry with its Idempotency-Key finds it, and is answered only once that is replicated
        too (`get_idempotent`), so nothing is applied twice and nothing unreplicated is
        acknowledged. An outcome that changed nothing (a conflict, a missing session) is
        answered as it is."""
        if not self.wait_replicas:
            return await self._run(script, keys, args)
        out, acked = await self._wait.run(script, keys, args)
        if out[0] == b"ok" and int(acked) < self.wait_replicas:
            raise StoreUnavailable(
                f"session store: the change reached {acked} of {self.wait_replicas} replicas "
                f"within {ms(self.wait_timeout_s)} ms (RNNSERVE_REDIS_WAIT_REPLICAS); retry with "
                "the same Idempotency-Key"
            )
        return out

    def _changed(self, live: int) -> None:
        if self._on_change is not None and live >= 0:
            self._on_change(live)

    # -- SessionStore -----------------------------------------------------------------------

    async def create(self, record: SessionRecord) -> None:
        self._holds.stale(record.id)
        st, meta = encode_record(record)
        keys = self._keys(record.id)
        if record.owner is not None:
            keys.append(self.layout.own(record.id, record.owner))
        head, tail = self.layout.around(record.id)
        max_sessions, max_own = self.max_sessions, self.max_per_owner or 0
        if self.cluster:  # the caps against the summed counts (the script sees one bucket)
            async with store_errors(
                self.deadline_s
            ):  # (one that exists is answered so, caps or not)
                exists = await self._r.exists(keys[0])
            if not exists:
                max_sessions, max_own = await self._counts.caps(
                    record.owner, self.max_sessions, self.max_per_owner, self.evict
                )
        out = await self._write(
            self._create,
            keys,
            [
                record.id,
                record.version,
                st,
                meta,
                ms(record.ttl_s),
                ms(self.expired_memory_s),
                max_sessions,
                self.evict,
                head,
                secrets.token_hex(8),
                max_own,
                tail,
            ],
        )
        if out[0] == b"exists":
            raise SessionExists(f"session {record.id!r} already exists", field="session_id")
        if out[0] == b"owner_limit":
            assert self.max_per_owner is not None
            raise owner_limit(self.max_per_owner)
        if out[0] == b"limit":
            raise global_limit(self.max_sessions)
        if out[2] and self._on_evict is not None:
            self._on_evict("evicted")
        self._changed(self._counts.counted(int(out[3]), 0 if out[2] else 1))

    async def get(self, session_id: str) -> SessionRecord:
        out = self._holds.read(session_id)  # (as the lease was granted)
        if out is None:
            s, g, _, live = self._keys(session_id)
            out = await self._run(self._get, [s, g, live], [session_id, ms(self.expired_memory_s)])
        if out[0] == b"missing":
            raise self._missing(session_id, out[1])
        return decode_record(session_id, out[3], out[4], int(out[1]))

    async def commit(
        self,
        record: SessionRecord,
        expected_version: int,
        idempotency: tuple[str, IdempotencyRecord] | None = None,
    ) -> SessionRecord:
        st, meta = encode_record(record)
        idem_key, idem_val, idem_ttl = "", b"", 1
        if idempotency is not None:
            idem_key = idempotency[0]
            idem_val, idem_ttl = encode_idempotent(idempotency[1], self.clock())
        keys = self._keys(record.id)
        nonce = secrets.token_hex(8)
        args = [
            record.id,
            expected_version,
            record.version,
            st,
            meta,
            ms(record.ttl_s),
            ms(self.expired_memory_s),
            idem_key,
            idem_val,
            idem_ttl,
            nonce,
        ]
        lease = self._holds.for_commit(record.id)
        if lease is not None:  # the caller's last call under its lease: released in this one
            keys += [lease.lock, self._k(record.id, f"c:{nonce}")]
            args += [lease.token, ms(max(10.0, 5 * self.deadline_s))]
        try:
            out = await self._write(self._commit, keys, args)
        except BaseException:
            if lease is not None:
                self._holds.kept(lease)
            raise
        if out[0] == b"missing":
            raise self._missing(record.id, out[1])
        if out[0] == b"conflict":
            raise VersionConflict(
                f"session {record.id!r} is at version {int(out[1])}, not {expected_version}",
                field="expected_version",
            )
        return record.replace(expires_at=int(out[1]) / 1000 + record.ttl_s)

    async def delete(self, session_id: str) -> None:
        self._holds.stale(session_id)
        out = await self._write(self._delete, self._keys(session_id), [session_id])
        if out[0] == b"missing":
            raise self._missing(session_id, out[1])
        self._changed(self._counts.counted(int(out[1]), -1))

    async def count(self) -> int:
        return (await self._counts.sweep_all())[1]

    async def count_graph(self, model: str, sha256: str, page: int = 1000) -> int:
        """Reads each live session's small meta field (not its state), a page at a time: an
        operator's unload polls it, not the request path."""
        return await self._counts.count_graph(f"{model}/{sha256}", page)

    async def get_idempotent(self, session_id: str, key: str) -> IdempotencyRecord | None:
        if self.wait_replicas:  # a replay, acknowledged only once what it replays is replicated
            raw, acked = await self._wait.run(self._get_idem, [self._k(session_id, "i")], [key])
            if raw is not None and acked < self.wait_replicas:
                raise StoreUnavailable(
                    f"session store: the change this request made reached {acked} of "
                    f"{self.wait_replicas} replicas (RNNSERVE_REDIS_WAIT_REPLICAS); retry"
                )
        else:
            raw = self._holds.idempotent(session_id, key)  # (read with the lease)
            if raw is NOT_READ:
                async with store_errors(self.deadline_s):
                    raw = await self._r.hget(self._k(session_id, "i"), key)
        return None if raw is None else decode_idempotent(raw, self.clock())

    async def put_idempotent(self, session_id: str, key: str, record: IdempotencyRecord) -> None:
        self._holds.stale(session_id)
        val, ttl = encode_idempotent(record, self.clock())
        await self._run(self._put_idem, [self._k(session_id, "i")], [key, val, ttl])

    def lock(self, session_id: str, key: str | None = None) -> AbstractAsyncContextManager[None]:
        """The session's lease, taken with the session read in the same call (the holder's
        `get` uses that read, and its `get_idempotent(key)` the record read with it) and given
        up with the holder's commit where there is one: a feed is two calls to Redis, not
        four or five. (With `wait_replicas`, a replay's record is read by `get_idempotent`
        itself: it waits for the replicas.)"""
        lk, q, w = (self._k(session_id, k) for k in ("lock", "q", "w"))
        s, g, i, live = self._keys(session_id)
        read = ([s, g, live], [session_id, ms(self.expired_memory_s)])
        if key is not None and not self.wait_replicas:
            read[0].append(i)
            read[1].append(key)
        else:
            key = None
        return self._holds.hold(session_id, (lk, q, w), read, key)

    local_locks = False  # a lease is taken in Redis: never without I/O
    local = None  # (nor a record read or written)

    def lock_now(self, session_id: str) -> asyncio.Future[None] | None:
        raise RuntimeError("a Redis lease is not taken without I/O (local_locks is False)")

    def abandon(self, session_id: str, turn: asyncio.Future[None]) -> None:
        raise RuntimeError("a Redis lease is not taken without I/O (local_locks is False)")

    def unlock(self, session_id: str) -> None:
        raise RuntimeError("a Redis lease is not taken without I/O (local_locks is False)")

    async def sweep(self) -> int:
        removed, live = await self._counts.sweep_all()
        if self._on_evict is not None:
            for _ in range(int(removed)):
                self._on_evict("expired")
        self._changed(int(live))
        return int(removed)

    async def ping(self) -> None:
        """Raise `StoreUnavailable` unless Redis answers (for readiness checks)."""
        async with store_errors(self.deadline_s):
            await self._r.ping()

    async def close(self) -> None:
        await self._lease.janitor.close()
        await self._wait.close()
        await self._r.aclose()
