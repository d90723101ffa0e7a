"""The Redis session store: any replica serves any session (redis-py asyncio, one Redis primary).

Keys (the id in a hash tag, so one session's keys share a cluster slot):

    {p}{<id>}:s     HASH  v=version, st=state blob, m=meta JSON, t=idle TTL ms,   PEXPIRE = idle TTL
                          w=nonce of the last write
    {p}{<id>}:g     STR   "live" | "evicted": tells expired/evicted from unknown  TTL + expired_memory_s
    {p}{<id>}:i     HASH  Idempotency-Key -> "<expires_at_ms>|<JSON record>"     its own TTL
    {p}{<id>}:lock  STR   the lease holder's token                               PEXPIRE = lease
    {p}{<id>}:q/:w  ZSET/HASH  waiters in arrival order / their liveness deadlines
    {p}live         ZSET  id -> expiry ms: live count, the cap, LRU-by-expiry eviction

`st` is the portable state blob (`blob.encode_state`: magic, format, JSON header with model sha256,
version, pending text, dtypes and shapes, raw little-endian arrays, sha256). Redis keeps the TTLs;
every multi-key change is one Lua script, so it is atomic.

Guarantees:
* commit is compare-and-set on `v` inside Lua: a state advances at most once per version, whatever
  replicas, leases or network retries do (the client's own retry of a commit whose reply was lost
  is recognised by a per-call nonce and succeeds instead of conflicting);
* `lock(id)` is a lease (SET NX PX) renewed while held, granted in arrival order across replicas
  (a queue of waiters, each kept alive by its polling; dead waiters are skipped). A holder that
  dies (kill -9) blocks the session for at most one lease. Mutual exclusion is for liveness only:
  if a lease is ever lost (pause longer than the lease, failover), CAS still refuses the stale
  writer with `VersionConflict`, so no update is lost and none is applied twice;
* no local state cache: every read sees the committed version;
* Redis unreachable, loading, read-only or out of memory -> `StoreUnavailable` (503
  `store_unavailable`, Retry-After); connections are re-made on the next call, so recovery is
  automatic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Literal

import numpy as np
from redis import exceptions as rx
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from service.engine.sessions.blob import StateBlob, decode_state, encode_state
from service.engine.sessions.record import IdempotencyRecord, SessionRecord
from service.engine.sessions.store import Clock
from service.errors import (
    SessionEvicted,
    SessionExists,
    SessionExpired,
    SessionLimit,
    SessionNotFound,
    StoreUnavailable,
    VersionConflict,
)

log = logging.getLogger("rnnserve.sessions.redis")

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS s g i live | ARGV id v st m ttl_ms extra_ms max evict prefix nonce
# Redis refuses a script's writes for OOM only until its first write succeeds, so each script's
# first write is the one that grows memory: reads (ZCOUNT) decide, pruning comes after.
_CREATE = (
    _NOW
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'w') == ARGV[10] then return {'ok', tostring(now), '', '0'} end
  return {'exists'}
end
local evicted = ''
if redis.call('ZCOUNT', KEYS[4], '(' .. now, '+inf') >= tonumber(ARGV[7]) then
  if ARGV[8] ~= 'lru' then return {'limit'} end
  for _, c in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '(' .. now, '+inf', 'LIMIT', 0, 64)) do
    local k = ARGV[9] .. '{' .. c .. '}:'
    if redis.call('EXISTS', k .. 'lock') == 0 then
      redis.call('DEL', k .. 's', k .. 'i')
      redis.call('SET', k .. 'g', 'evicted', 'PX', ARGV[6])
      redis.call('ZREM', KEYS[4], c)
      evicted = c
      break
    end
  end
  if evicted == '' then return {'limit'} end
end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'st', ARGV[3], 'm', ARGV[4], 't', ARGV[5], 'w', ARGV[10])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('SET', KEYS[2], 'live', 'PX', tonumber(ARGV[5]) + tonumber(ARGV[6]))
redis.call('DEL', KEYS[3])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[5]), ARGV[1])
return {'ok', tostring(now), evicted, tostring(redis.call('ZCARD', KEYS[4]))}
"""
)

# KEYS s g live | ARGV id extra_ms
_GET = (
    _NOW
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing', redis.call('GET', KEYS[2]) or ''} end
local h = redis.call('HMGET', KEYS[1], 'v', 'st', 'm', 't')
local ttl = tonumber(h[4])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('SET', KEYS[2], 'live', 'PX', ttl + tonumber(ARGV[2]))
redis.call('ZADD', KEYS[3], now + ttl, ARGV[1])
return {'ok', tostring(now), h[1], h[2], h[3]}
"""
)

# KEYS s g i live | ARGV id expected new st m ttl_ms extra_ms idem_key idem_val idem_ttl_ms nonce
# (`nonce` is unique per commit call: a network retry of the same call finds its own write)
_COMMIT = (
    _NOW
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing', redis.call('GET', KEYS[2]) or ''} end
local cur = redis.call('HGET', KEYS[1], 'v')
if cur ~= ARGV[2] then
  if cur == ARGV[3] and redis.call('HGET', KEYS[1], 'w') == ARGV[11] then return {'ok', tostring(now)} end
  return {'conflict', cur}
end
redis.call('HSET', KEYS[1], 'v', ARGV[3], 'st', ARGV[4], 'm', ARGV[5], 't', ARGV[6], 'w', ARGV[11])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('SET', KEYS[2], 'live', 'PX', tonumber(ARGV[6]) + tonumber(ARGV[7]))
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[6]), ARGV[1])
if ARGV[8] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[8], ARGV[9])
  if redis.call('PTTL', KEYS[3]) < tonumber(ARGV[10]) then redis.call('PEXPIRE', KEYS[3], ARGV[10]) end
  -- bounded cleanup (like Redis's own expiry): sample a few records, drop the expired ones
  if redis.call('HLEN', KEYS[3]) > 64 then
    for _, f in ipairs(redis.call('HRANDFIELD', KEYS[3], 16)) do
      local v = redis.call('HGET', KEYS[3], f)
      if v and tonumber(string.match(v, '^(%d+)|')) <= now then redis.call('HDEL', KEYS[3], f) end
    end
  end
end
return {'ok', tostring(now)}
"""
)

# KEYS i | ARGV field value ttl_ms
_PUT_IDEM = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 1
"""

# KEYS s g i live | ARGV id
_DELETE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing', redis.call('GET', KEYS[2]) or ''} end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[1])
return {'ok', tostring(redis.call('ZCARD', KEYS[4]))}
"""

# KEYS live | -> {removed, live}
_SWEEP = (
    _NOW
    + """
local removed = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return {removed, redis.call('ZCARD', KEYS[1])}
"""
)

# KEYS lock q w | ARGV token lease_ms alive_ms  -> 1 granted, 0 wait
# (already holding it means granted: a resent call whose first reply was lost)
_ACQUIRE = (
    _NOW
    + """
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
if redis.call('ZSCORE', KEYS[2], ARGV[1]) == false then
  redis.call('ZADD', KEYS[2], redis.call('HINCRBY', KEYS[3], '#seq', 1), ARGV[1])
end
redis.call('HSET', KEYS[3], ARGV[1], now + tonumber(ARGV[3]))
local got = 0
for _, h in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if h == ARGV[1] then break end
  if tonumber(redis.call('HGET', KEYS[3], h) or '0') >= now then got = -1; break end
  redis.call('ZREM', KEYS[2], h)
  redis.call('HDEL', KEYS[3], h)
end
if got == 0 and redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
  got = 1
end
if redis.call('ZCARD', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[2], KEYS[3])
else
  redis.call('PEXPIRE', KEYS[2], 2 * tonumber(ARGV[3]))
  redis.call('PEXPIRE', KEYS[3], 2 * tonumber(ARGV[3]))
end
return math.max(got, 0)
"""
)

# KEYS q w | ARGV token
_LEAVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""

# KEYS lock | ARGV token lease_ms
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# KEYS lock | ARGV token
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

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


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisStore:
    """`SessionStore` on one Redis primary (or a Sentinel/managed failover pair)."""

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
        client: Redis | None = None,
    ) -> None:
        self.max_sessions = max_sessions
        self.evict = evict
        self.expired_memory_s = expired_memory_s
        self.prefix = key_prefix
        self.lock_lease_s = lock_lease_s
        self.lock_poll_max_s = lock_poll_max_s
        self.clock = clock  # wall clock, for idempotency expiry (shared by replicas)
        self._on_change = on_change
        self._on_evict = on_evict
        self._r: Redis = client or Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=min(socket_timeout_s, 1.0),
            # one quick retry on a fresh connection: a pooled connection that died with a
            # restarted Redis is replaced instead of failing the request
            retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), 1),
            health_check_interval=15,
        )
        reg = self._r.register_script
        self._create, self._get, self._commit = reg(_CREATE), reg(_GET), reg(_COMMIT)
        self._put_idem, self._delete, self._sweep = reg(_PUT_IDEM), reg(_DELETE), reg(_SWEEP)
        self._acquire, self._leave = reg(_ACQUIRE), reg(_LEAVE)
        self._renew, self._release = reg(_RENEW), reg(_RELEASE)

    # -- keys and encoding ------------------------------------------------------------------

    def _k(self, session_id: str, kind: str) -> str:
        return f"{self.prefix}{{{session_id}}}:{kind}"

    def _keys(self, session_id: str) -> list[str]:
        return [
            self._k(session_id, "s"),
            self._k(session_id, "g"),
            self._k(session_id, "i"),
            self.prefix + "live",
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
            {"created_at": rec.created_at, "ttl_s": rec.ttl_s, "owner": rec.owner},
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

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (rx.ConnectionError, rx.TimeoutError) as e:
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
        with self._errors():
            return await script(keys=keys, args=args)

    def _changed(self, live: int) -> None:
        if self._on_change is not None:
            self._on_change(live)

    # -- SessionStore -----------------------------------------------------------------------

    async def create(self, record: SessionRecord) -> None:
        st, meta = self._encode(record)
        out = await self._run(
            self._create,
            self._keys(record.id),
            [
                record.id,
                record.version,
                st,
                meta,
                _ms(record.ttl_s),
                _ms(self.expired_memory_s),
                self.max_sessions,
                self.evict,
                self.prefix,
                secrets.token_hex(8),
            ],
        )
        if out[0] == b"exists":
            raise SessionExists(f"session {record.id!r} already exists", field="session_id")
        if out[0] == b"limit":
            raise SessionLimit(f"the live-session cap ({self.max_sessions}) is reached")
        if out[2] and self._on_evict is not None:
            self._on_evict("evicted")
        self._changed(int(out[3]))

    async def get(self, session_id: str) -> SessionRecord:
        s, g, _, live = self._keys(session_id)
        out = await self._run(self._get, [s, g, live], [session_id, _ms(self.expired_memory_s)])
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
        out = await self._run(
            self._commit,
            self._keys(record.id),
            [
                record.id,
                expected_version,
                record.version,
                st,
                meta,
                _ms(record.ttl_s),
                _ms(self.expired_memory_s),
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
        out = await self._run(self._delete, self._keys(session_id), [session_id])
        if out[0] == b"missing":
            raise self._missing(session_id, out[1])
        self._changed(int(out[1]))

    async def count(self) -> int:
        _, live = await self._run(self._sweep, [self.prefix + "live"], [])
        return int(live)

    def _idem_args(self, rec: IdempotencyRecord) -> tuple[bytes, int]:
        """The stored value ("<expires_at ms>|<JSON>") and the TTL the record still has."""
        body = json.dumps(
            {"fingerprint": rec.fingerprint, "result": rec.result},
            separators=(",", ":"),
            default=_jsonable,
        )
        return f"{round(rec.expires_at * 1000)}|{body}".encode(), _ms(rec.expires_at - self.clock())

    async def get_idempotent(self, session_id: str, key: str) -> IdempotencyRecord | None:
        with self._errors():
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

    @contextlib.asynccontextmanager
    async def lock(self, session_id: str) -> AsyncIterator[None]:
        token = secrets.token_hex(16)
        lk, q, w = (self._k(session_id, k) for k in ("lock", "q", "w"))
        lease_ms = _ms(self.lock_lease_s)
        alive_ms = max(2000, _ms(40 * self.lock_poll_max_s))
        delay = 0.001
        task = asyncio.current_task()
        try:
            while True:
                granted = await self._run(self._acquire, [lk, q, w], [token, lease_ms, alive_ms])
                # redis-py can swallow a cancellation that lands mid-command; the task still
                # says it is being cancelled, and a waiter whose client left must not go on
                if task is not None and task.cancelling():
                    if granted:
                        await self._run(self._release, [lk], [token])
                    raise asyncio.CancelledError
                if granted:
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.lock_poll_max_s)
        except BaseException:
            # cancelled (client gone) or store down while queued: give up our place
            with contextlib.suppress(Exception):
                await self._run(self._leave, [q, w], [token])
            raise
        renewer = asyncio.create_task(self._keep_lease(session_id, lk, token, lease_ms))
        try:
            yield
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            try:
                await self._run(self._release, [lk], [token])
            except StoreUnavailable:
                log.warning(
                    "lease not released (store unavailable); it expires by itself",
                    extra={"session": session_id},
                )

    async def _keep_lease(self, session_id: str, key: str, token: str, lease_ms: int) -> None:
        while True:
            await asyncio.sleep(lease_ms / 3000)
            try:
                held = await self._run(self._renew, [key], [token, lease_ms])
            except StoreUnavailable:
                continue  # the commit will fail with store_unavailable anyway
            if not held:
                # Only reachable after a stall longer than the lease or a failover; the version
                # compare-and-set still refuses any stale commit.
                log.warning("session lease lost", extra={"session": session_id})
                return

    async def sweep(self) -> int:
        removed, live = await self._run(self._sweep, [self.prefix + "live"], [])
        if self._on_evict is not None:
            for _ in range(int(removed)):
                self._on_evict("expired")
        self._changed(int(live))
        return int(removed)

    async def ping(self) -> None:
        """Raise `StoreUnavailable` unless Redis answers (for readiness checks)."""
        with self._errors():
            await self._r.ping()

    async def close(self) -> None:
        await self._r.aclose()
