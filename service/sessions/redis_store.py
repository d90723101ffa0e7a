"""The Redis session store: any replica serves any session (redis-py asyncio; one Redis primary, or
a Redis Cluster with `cluster=True`: `Layout` says where the keys go there).

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
* no local state cache: every read sees the committed version;
* Redis unreachable, hung, loading, read-only or out of memory -> `StoreUnavailable` (503
  `store_unavailable`, Retry-After) within one deadline per call (`socket_timeout_s`: connect,
  read and retry together); a request that fails leaves no lease behind (`redis_lease.Janitor`);
  connections are re-made on the next call, so recovery is automatic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal

import numpy as np
from redis import exceptions as rx
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import ConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff, NoBackoff

from service.errors import (
    SessionEvicted,
    SessionExists,
    SessionExpired,
    SessionNotFound,
    StoreUnavailable,
    VersionConflict,
)
from service.sessions import redis_scripts as lua
from service.sessions.blob import StateBlob, decode_state, encode_state
from service.sessions.record import IdempotencyRecord, SessionRecord
from service.sessions.redis_layout import CLUSTER_BUCKETS, Layout
from service.sessions.redis_lease import RedisLease
from service.sessions.redis_scripts import ms
from service.sessions.store import Clock, global_limit, owner_limit

# Server replies that mean "not now" rather than "bug": answered as 503 like a lost connection.
_TRANSIENT = (
    "OOM",
    "LOADING",
    "BUSY",
    "MASTERDOWN",
    "READONLY",
    "TRYAGAIN",
    "NOREPLICAS",
    "MISCONF",
    "CLUSTERDOWN",
)


def _jsonable(o: object) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


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
        self._node_clients: dict[tuple[str, int], Redis] = {}  # a cluster's, for `WAIT`
        self._slots_known = False  # the cluster client's slot map read since the last failure
        self._node_clients_used = False
        self._slots_read_at = 0.0
        self.layout = Layout(key_prefix, CLUSTER_BUCKETS if cluster else None)
        # a cluster's summed live count as last read (for the gauge), and when
        self._live_seen: tuple[float, int] | None = None
        self._seen_counts: dict[str, int] = {}  # each set's live count as last read
        # one quick retry on a fresh connection: a pooled connection that died with a
        # restarted Redis is replaced instead of failing the request
        retry = Retry(ExponentialBackoff(cap=0.1, base=0.01), 1)
        timeouts: dict[str, Any] = {
            "socket_timeout": socket_timeout_s,
            "socket_connect_timeout": min(socket_timeout_s, 1.0),
            "retry": retry,
        }
        # redis-py's cluster client: slots, MOVED/ASK and failovers are its business (a
        # failed-over slot is found again on the next call)
        self._sentinel = (
            # a primary found through Sentinel: its client asks the sentinels again for the
            # primary whenever a connection fails (a failover's new primary, on the next call)
            Sentinel(
                sentinels,
                socket_timeout=socket_timeout_s,
                socket_connect_timeout=min(socket_timeout_s, 1.0),
            )
            if sentinels and client is None
            else None
        )
        self.sentinel_master = sentinel_master
        self._r: Redis | RedisCluster = client or (
            RedisCluster.from_url(url, **timeouts)
            if cluster
            else self._sentinel.master_for(sentinel_master, **timeouts)
            if self._sentinel is not None
            else Redis.from_url(url, health_check_interval=15, **timeouts)
        )
        # `WAIT` pipelines go down connections that never resend (see `_with_wait`)
        self._wait_client: Redis | RedisCluster = self._r
        if wait_replicas and not cluster and client is None:
            no_resend = {**timeouts, "retry": Retry(NoBackoff(), 0)}
            self._wait_client = (
                self._sentinel.master_for(sentinel_master, **no_resend)
                if self._sentinel is not None
                else Redis.from_url(url, **no_resend)
            )
        reg = self._r.register_script
        self._create, self._get, self._commit = reg(lua.CREATE), reg(lua.GET), reg(lua.COMMIT)
        self._put_idem, self._delete = reg(lua.PUT_IDEM), reg(lua.DELETE)
        self._sweep, self._evict = reg(lua.SWEEP), reg(lua.EVICT)
        self._get_idem = reg(lua.GET_IDEM)
        self._lease = RedisLease(self._r, self._run, lock_lease_s, lock_poll_max_s)

    # -- keys and encoding ------------------------------------------------------------------

    def _k(self, session_id: str, kind: str) -> str:
        return self.layout.key(session_id, kind)

    def _keys(self, session_id: str) -> list[str]:
        return [
            self._k(session_id, "s"),
            self._k(session_id, "g"),
            self._k(session_id, "i"),
            self.layout.live(session_id),
        ]

    @staticmethod
    def _encode(rec: SessionRecord) -> tuple[bytes, str]:
        blob = StateBlob(
            rec.model,
            rec.model_sha256,
            rec.version,
            rec.pending,
            rec.tokens_seen,
            list(rec.states),
            rec.logits,
        )
        names = [f"s{i}" for i in range(len(rec.states))]  # the store keeps order, not names
        meta = json.dumps(
            # the graph, readable without the state blob (`count_graph`)
            {
                "created_at": rec.created_at,
                "ttl_s": rec.ttl_s,
                "owner": rec.owner,
                "graph": f"{rec.model}/{rec.model_sha256}",
            },
            separators=(",", ":"),
        )
        return encode_state(blob, names), meta

    @staticmethod
    def _decode(session_id: str, st: bytes, meta: bytes, now_ms: int) -> SessionRecord:
        b = decode_state(st)
        m = json.loads(meta)
        ttl_s = float(m["ttl_s"])
        return SessionRecord(
            id=session_id,
            model=b.model,
            model_sha256=b.model_sha256,
            version=b.version,
            states=tuple(b.states),
            pending=b.pending,
            logits=b.logits,
            created_at=float(m["created_at"]),
            ttl_s=ttl_s,
            expires_at=now_ms / 1000 + ttl_s,
            owner=m["owner"],
            tokens_seen=b.tokens_seen,
        )

    def _missing(self, session_id: str, marker: bytes) -> Exception:
        if marker == b"evicted":
            return SessionEvicted(f"session {session_id!r} was evicted (live-session cap reached)")
        if marker == b"live":
            return SessionExpired(f"session {session_id!r} expired after its idle TTL")
        return SessionNotFound(f"session {session_id!r} does not exist")

    @contextlib.asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        """One deadline for the whole call (connect, send, read, redis-py's retry together; a
        hung Redis keeps its sockets open, so the socket timeouts alone add up), and Redis's
        errors as `StoreUnavailable`. A call cut off by the deadline has its connection dropped
        by redis-py, so no later call reads its late reply."""
        try:
            async with asyncio.timeout(self.deadline_s):
                yield
        except TimeoutError:
            raise StoreUnavailable(
                f"session store did not answer within {self.deadline_s:g} s"
            ) from None
        except (rx.ConnectionError, rx.TimeoutError, rx.RedisClusterException) as e:
            # (a cluster none of whose nodes answer, or a slot no node serves yet)
            raise StoreUnavailable(f"session store unreachable ({type(e).__name__})") from None
        except (
            rx.OutOfMemoryError,
            rx.ReadOnlyError,
            rx.TryAgainError,
            rx.MasterDownError,
            rx.ClusterDownError,
        ) as e:
            raise StoreUnavailable(f"session store not accepting writes ({e})") from None
        except rx.ResponseError as e:
            words = str(e).split()
            if (words and words[0].upper() in _TRANSIENT) or "command not allowed" in str(e):
                raise StoreUnavailable(f"session store not accepting writes ({e})") from None
            raise

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        async with self._errors():
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
        out, acked = await self._with_wait(script, keys, args)
        if out[0] == b"ok" and int(acked) < self.wait_replicas:
            raise StoreUnavailable(
                f"session store: the change reached {acked} of {self.wait_replicas} replicas "
                f"within {ms(self.wait_timeout_s)} ms (RNNSERVE_REDIS_WAIT_REPLICAS); retry with "
                "the same Idempotency-Key"
            )
        return out

    async def _with_wait(self, script: Any, keys: list[str], args: list[Any]) -> tuple[Any, int]:
        """(the script's answer, the replicas that have it): the script and `WAIT` in one
        pipeline, on a connection that never resends (a resent script finds its own write and
        changes nothing, and `WAIT` on the new connection would then count nothing of it)."""
        for attempt in (1, 2):
            try:
                async with self._errors():
                    client = (
                        self._wait_client if not self.cluster else await self._node_client(keys[0])
                    )
                    pipe = client.pipeline(transaction=False)
                    await script(keys=keys, args=args, client=pipe)
                    pipe.execute_command("WAIT", self.wait_replicas, ms(self.wait_timeout_s))
                    out, acked = await pipe.execute()
                    return out, int(acked)
            except rx.NoScriptError:  # a flushed script cache, or a new server at the address
                if attempt == 2:
                    raise StoreUnavailable("session store: scripts not loaded") from None
            except rx.AskError as e:  # (MOVED too: a subclass)
                self._slots_known = False  # the slot moved: read the map again, once
                if attempt == 2 or not isinstance(e, rx.MovedError):  # ASK: a slot migrating
                    raise StoreUnavailable(f"session store: slot moving ({e})") from None
            except StoreUnavailable:
                self._slots_known = False  # a failover's new primary, on the next call
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _node_client(self, key: str) -> Redis:
        """A plain client of the primary that holds `key` (`WAIT` counts the writes of its own
        connection, so it goes down the script's connection, not the cluster client's)."""
        assert isinstance(self._r, RedisCluster)
        if not self._slots_known:  # the slot map as the cluster says it now
            if not self._node_clients_used:
                await self._r.initialize()
                self._slots_known = self._node_clients_used = True
            elif time.monotonic() - self._slots_read_at > 0.1:  # again, after a failure
                self._slots_read_at = time.monotonic()
                await self._r.nodes_manager.initialize()
                self._slots_known = True
        node = self._r.get_node_from_key(key)
        if node is None:
            raise StoreUnavailable("session store: no cluster node serves this session's slot")
        addr = (str(node.host), int(node.port))
        client = self._node_clients.get(addr)
        if client is None:
            # the cluster client's own connection settings (credentials, TLS), no resend
            kwargs = {**node.connection_kwargs, "retry": Retry(NoBackoff(), 0)}
            client = self._node_clients[addr] = Redis(
                connection_pool=ConnectionPool(connection_class=node.connection_class, **kwargs)
            )
        return client

    def _changed(self, live: int) -> None:
        if self._on_change is not None and live >= 0:
            self._on_change(live)

    # -- SessionStore -----------------------------------------------------------------------

    async def create(self, record: SessionRecord) -> None:
        st, meta = self._encode(record)
        keys = self._keys(record.id)
        if record.owner is not None:
            keys.append(self.layout.own(record.id, record.owner))
        head, tail = self.layout.around(record.id)
        max_sessions, max_own = self.max_sessions, self.max_per_owner or 0
        if self.cluster:  # the caps against the summed counts (the script sees one bucket)
            async with self._errors():  # (one that exists is answered so, caps or not)
                exists = await self._r.exists(keys[0])
            if not exists:
                max_sessions, max_own = await self._cluster_caps(record.owner)
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
        self._changed(self._counted(int(out[3]), 0 if out[2] else 1))

    async def get(self, session_id: str) -> SessionRecord:
        s, g, _, live = self._keys(session_id)
        out = await self._run(self._get, [s, g, live], [session_id, ms(self.expired_memory_s)])
        if out[0] == b"missing":
            raise self._missing(session_id, out[1])
        return self._decode(session_id, out[3], out[4], int(out[1]))

    async def commit(
        self,
        record: SessionRecord,
        expected_version: int,
        idempotency: tuple[str, IdempotencyRecord] | None = None,
    ) -> SessionRecord:
        st, meta = self._encode(record)
        idem_key, idem_val, idem_ttl = "", b"", 1
        if idempotency is not None:
            idem_key = idempotency[0]
            idem_val, idem_ttl = self._idem_args(idempotency[1])
        out = await self._write(
            self._commit,
            self._keys(record.id),
            [
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
                secrets.token_hex(8),
            ],
        )
        if out[0] == b"missing":
            raise self._missing(record.id, out[1])
        if out[0] == b"conflict":
            raise VersionConflict(
                f"session {record.id!r} is at version {int(out[1])}, not {expected_version}",
                field="expected_version",
            )
        return record.replace(expires_at=int(out[1]) / 1000 + record.ttl_s)

    async def delete(self, session_id: str) -> None:
        out = await self._write(self._delete, self._keys(session_id), [session_id])
        if out[0] == b"missing":
            raise self._missing(session_id, out[1])
        self._changed(self._counted(int(out[1]), -1))

    async def count(self) -> int:
        return (await self._sweep_all())[1]

    # -- a cluster's counts: summed over the buckets ------------------------------------------

    async def _sums(self, *groups: list[str]) -> list[int]:
        """Live members of each group of sets, summed (one pipeline: a round trip per shard).
        A set whose shard does not answer (a failover under way) counts as last read, so one
        shard down does not stop creates on the others; none answering is 503."""
        now = f"({round(self.clock() * 1000)}"
        keys = [k for group in groups for k in group]
        async with self._errors():
            pipe = self._r.pipeline(transaction=False)
            for k in keys:
                pipe.zcount(k, now, "+inf")
            try:
                got = await pipe.execute(raise_on_error=False)
            except (rx.ConnectionError, rx.TimeoutError, rx.RedisClusterException):
                got = [None] * len(keys)
        counts: list[int] = []
        for k, n in zip(keys, got, strict=True):
            if isinstance(n, int):
                if k.endswith("live"):  # (the live sets' only: owners' would grow unbounded)
                    self._seen_counts[k] = n
                counts.append(n)
            else:
                counts.append(self._seen_counts.get(k, 0))
        if keys and not any(isinstance(n, int) for n in got):
            raise StoreUnavailable("session store: no shard answered")
        out, at = [], 0
        for group in groups:
            out.append(sum(counts[at : at + len(group)]))
            at += len(group)
        return out

    async def _cluster_caps(self, owner: str | None) -> tuple[int, int]:
        """The (global, owner) caps to hand the create script of one bucket, which sees only
        its bucket: the counts summed over every bucket just before, checked here. At the
        global cap the script gets 0 (it then evicts from its bucket with `lru`, or refuses).
        Unlike on one primary, creates racing on several replicas can pass a cap by as many as
        are racing (docs/deploy.md)."""
        owns = self.layout.owns(owner) if owner and self.max_per_owner is not None else []
        live, owned = await self._sums(self.layout.lives(), owns)
        self._live_seen = (time.monotonic(), live)
        if owns and self.max_per_owner is not None and owned >= self.max_per_owner:
            raise owner_limit(self.max_per_owner)
        if live < self.max_sessions or (self.evict == "lru" and await self._evict_oldest()):
            return 2**53, 0
        return 0, 0  # (the script refuses: 'limit')

    async def _evict_oldest(self) -> bool:
        """A cluster at its cap: the least recently used session that no request holds goes,
        whichever bucket it is in (each bucket's oldest are read, then tried oldest first)."""
        lives = self.layout.lives()
        async with self._errors():
            pipe = self._r.pipeline(transaction=False)
            now = f"({round(self.clock() * 1000)}"
            for key in lives:  # each bucket's oldest live one (expired ones await the sweep)
                pipe.zrangebyscore(key, now, "+inf", start=0, num=1, withscores=True)
            oldest = await pipe.execute()
        order = sorted(
            (first[0][1], key) for key, first in zip(lives, oldest, strict=True) if first
        )
        for _, key in order:
            head, tail = self.layout.around_live(key)
            gone = await self._run(self._evict, [key], [head, tail, ms(self.expired_memory_s)])
            if gone:
                if self._on_evict is not None:
                    self._on_evict("evicted")
                self._counted(0, -1)
                return True
        return False

    def _counted(self, in_set: int, delta: int) -> int:
        """The live count after a create (+1) or delete (-1), for the gauge: the set's own
        count on one primary; a cluster's sum as last read, moved by this replica's changes
        since (the sweep reads it again)."""
        if not self.cluster:
            return in_set
        if self._live_seen is None:
            return -1  # not read yet: the gauge waits for the sweep
        self._live_seen = (self._live_seen[0], max(0, self._live_seen[1] + delta))
        return self._live_seen[1]

    async def _sweep_all(self) -> tuple[int, int]:
        """Expired members dropped from every live set: (removed, live)."""
        removed = live = 0
        for key in self.layout.lives():
            r, n = await self._run(self._sweep, [key], [])
            removed, live = removed + int(r), live + int(n)
        if self.cluster:
            self._live_seen = (time.monotonic(), live)
        return removed, live

    async def count_graph(self, model: str, sha256: str, page: int = 1000) -> int:
        """Reads each live session's small meta field (not its state), a page at a time: an
        operator's unload polls it, not the request path."""
        found = 0
        for live in self.layout.lives():
            found += await self._count_graph_in(live, f"{model}/{sha256}", page)
        return found

    async def _count_graph_in(self, live: str, want: str, page: int) -> int:
        found, start = 0, 0
        async with self._errors():
            while True:
                ids = await self._r.zrange(live, start, start + page - 1)
                if not ids:
                    return found
                names = [sid.decode() if isinstance(sid, bytes) else str(sid) for sid in ids]
                pipe = self._r.pipeline(transaction=False)
                for sid in names:
                    pipe.hget(self._k(sid, "s"), "m")  # the small meta field, not the state
                metas = await pipe.execute()
                older = []  # written before the meta named the graph: read from the blob
                for sid, meta in zip(names, metas, strict=True):
                    if meta is None:  # expired since the page was read
                        continue
                    graph = json.loads(meta).get("graph")
                    if graph is None:
                        older.append(sid)
                    found += graph == want
                for sid in older:
                    st = await self._r.hget(self._k(sid, "s"), "st")
                    if isinstance(st, bytes):
                        b = decode_state(st)
                        found += f"{b.model}/{b.model_sha256}" == want
                start += page

    def _idem_args(self, rec: IdempotencyRecord) -> tuple[bytes, int]:
        """The stored value ("<expires_at ms>|<JSON>") and the TTL the record still has."""
        body = json.dumps(
            {"fingerprint": rec.fingerprint, "result": rec.result},
            separators=(",", ":"),
            default=_jsonable,
        )
        return f"{round(rec.expires_at * 1000)}|{body}".encode(), ms(rec.expires_at - self.clock())

    async def get_idempotent(self, session_id: str, key: str) -> IdempotencyRecord | None:
        if self.wait_replicas:  # a replay, acknowledged only once what it replays is replicated
            raw, acked = await self._with_wait(self._get_idem, [self._k(session_id, "i")], [key])
            if raw is not None and acked < self.wait_replicas:
                raise StoreUnavailable(
                    f"session store: the change this request made reached {acked} of "
                    f"{self.wait_replicas} replicas (RNNSERVE_REDIS_WAIT_REPLICAS); retry"
                )
        else:
            async with self._errors():
                raw = await self._r.hget(self._k(session_id, "i"), key)
        if raw is None:
            return None
        exp_ms, body = (raw.encode() if isinstance(raw, str) else raw).split(b"|", 1)
        expires_at = int(exp_ms) / 1000
        if expires_at <= self.clock():
            return None
        d = json.loads(body)
        return IdempotencyRecord(d["fingerprint"], d["result"], expires_at)

    async def put_idempotent(self, session_id: str, key: str, record: IdempotencyRecord) -> None:
        val, ttl = self._idem_args(record)
        await self._run(self._put_idem, [self._k(session_id, "i")], [key, val, ttl])

    def lock(self, session_id: str) -> AbstractAsyncContextManager[None]:
        lk, q, w = (self._k(session_id, k) for k in ("lock", "q", "w"))
        return self._lease.hold(session_id, (lk, q, w))

    local_locks = False  # a lease is taken in Redis: never without I/O

    def lock_now(self, session_id: str) -> asyncio.Future[None] | None:
        raise RuntimeError("a Redis lease is not taken without I/O (local_locks is False)")

    def abandon(self, session_id: str, turn: asyncio.Future[None]) -> None:
        raise RuntimeError("a Redis lease is not taken without I/O (local_locks is False)")

    def unlock(self, session_id: str) -> None:
        raise RuntimeError("a Redis lease is not taken without I/O (local_locks is False)")

    async def sweep(self) -> int:
        removed, live = await self._sweep_all()
        if self._on_evict is not None:
            for _ in range(int(removed)):
                self._on_evict("expired")
        self._changed(int(live))
        return int(removed)

    async def ping(self) -> None:
        """Raise `StoreUnavailable` unless Redis answers (for readiness checks)."""
        async with self._errors():
            await self._r.ping()

    async def close(self) -> None:
        await self._lease.janitor.close()
        for client in self._node_clients.values():
            await client.aclose()
        if self._wait_client is not self._r:
            await self._wait_client.aclose()
        await self._r.aclose()
