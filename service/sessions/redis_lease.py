"""The per-session lease behind `RedisStore.lock`: operations on one session are serialized
across replicas, in arrival order.

A lease is `SET NX PX` renewed every lease/3 while held. Waiters queue in a sorted set (`:q`,
arrival order) and keep their place by polling (1 ms doubling to `poll_max_s`); their liveness
deadlines live in a hash (`:w`), so a waiter that died is skipped. A holder that dies (kill -9)
blocks the session for at most one lease. Mutual exclusion is for liveness only: if a lease is
ever lost (a pause longer than the lease, a failover), the store's compare-and-set on the version
still refuses the stale writer.

A request that fails or is cancelled while it waits or holds (the store's deadline passed, the
client left) never waits again to clean up: it hands its token to the `Janitor`, which, in the
background and as soon as Redis answers, releases the lease if the token holds it, leaves the
queue, and leaves a tombstone for the token. The tombstone matters when Redis was hung rather
than down: the request's acquire may still sit in Redis's socket buffer and run when Redis
resumes, after its request was answered 503; the acquire script refuses a tombstoned token, and
if the acquire ran first the janitor's release undoes it. Either order, no lease outlives its
request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis, RedisCluster

from service.errors import StoreUnavailable
from service.sessions.redis_scripts import ms

log = logging.getLogger("rnnserve.sessions.redis")

# Runs a registered script with the store's error mapping (Redis errors -> StoreUnavailable).
Run = Callable[[Any, list[str], list[Any]], Awaitable[Any]]

# `acquire(lock, q, w, tomb, token, lease_ms, alive_ms, now)` -> 1 granted, 0 wait. A session
# nobody holds and nobody waits for (nearly every request's) is taken with four commands, no
# queue entry; otherwise the caller takes its place in the queue. (Already holding it means
# granted: a resent call whose first reply was lost; a tombstoned token's request has already
# failed: never granted, never queued.)
_ACQUIRE_FN = """
local function acquire(lock, q, w, tomb, token, lease_ms, alive_ms, now)
  if redis.call('EXISTS', tomb) == 1 then return 0 end
  local holder = redis.call('GET', lock)
  if holder == token then return 1 end
  if not holder and redis.call('EXISTS', q) == 0 then
    redis.call('SET', lock, token, 'PX', lease_ms)
    return 1
  end
  if redis.call('ZSCORE', q, token) == false then
    redis.call('ZADD', q, redis.call('HINCRBY', w, '#seq', 1), token)
  end
  redis.call('HSET', w, token, now + tonumber(alive_ms))
  local got = 0
  for _, h in ipairs(redis.call('ZRANGE', q, 0, -1)) do
    if h == token then break end
    if tonumber(redis.call('HGET', w, h) or '0') >= now then got = -1; break end
    redis.call('ZREM', q, h)
    redis.call('HDEL', w, h)
  end
  if got == 0 and redis.call('SET', lock, token, 'NX', 'PX', lease_ms) then
    redis.call('ZREM', q, token)
    redis.call('HDEL', w, token)
    got = 1
  end
  if redis.call('ZCARD', q) == 0 then
    redis.call('DEL', q, w)
  else
    redis.call('PEXPIRE', q, 2 * tonumber(alive_ms))
    redis.call('PEXPIRE', w, 2 * tonumber(alive_ms))
  end
  return math.max(got, 0)
end
"""

# KEYS lock q w tomb, then the read's | ARGV token lease_ms alive_ms, then the read's ->
# {1, what `read` returns} granted, {0} wait. `read(keys, args)` is the caller's Lua (the
# store's read of the session), run in the same call once the lease is granted; it comes after
# `redis_scripts.NOW`, whose clock reading (`now`) the acquire uses too.
_ACQUIRE = (
    _ACQUIRE_FN
    + """
if acquire(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3], now) == 0 then
  return {0}
end
return {1, read({unpack(KEYS, 5)}, {unpack(ARGV, 4)})}
"""
)

# KEYS lock q w tomb | ARGV token tomb_ms: whatever the token has (lease, place in the queue) is
# given up, and the tombstone keeps an acquire of it that runs later from being granted (the
# waiters' hash goes with the last of the queue: an acquire that finds no queue never reads it)
_FORGET = """
redis.call('SET', KEYS[4], '1', 'PX', ARGV[2])
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('DEL', KEYS[3]) end
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


class Janitor:
    """Gives up, in the background, the leases and queue places of requests that already failed.

    One task drains the pending tokens whenever Redis answers; while it does not, it retries with
    backoff (50 ms doubling to 1 s). The pending set is bounded: past `max_pending` the oldest
    token is dropped with a warning (its lease, if any, still expires by itself)."""

    def __init__(self, run: Run, script: Any, tomb_ms: int, max_pending: int = 10_000) -> None:
        self._run, self._forget, self._tomb_ms = run, script, tomb_ms
        self.max_pending = max_pending
        self._pending: dict[str, list[str]] = {}  # token -> its keys (lock, q, w, tomb)
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def forget(self, token: str, keys: list[str]) -> None:
        if len(self._pending) >= self.max_pending:
            dropped = next(iter(self._pending))
            del self._pending[dropped]
            log.warning("lease cleanup backlog full; the oldest lease is left to expire")
        self._pending[token] = keys
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        delay = 0.05
        while self._pending:
            try:
                for token, keys in list(self._pending.items()):
                    await self._run(self._forget, keys, [token, self._tomb_ms])
                    self._pending.pop(token, None)
                delay = 0.05
            except StoreUnavailable:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@dataclass(slots=True)
class Held:
    """A lease held: its token and lock key, what the read given to `hold` returned as the
    lease was granted (None once used or out of date), and whether a commit gives it up in its
    own call (`RedisStore.commit`: then there is nothing left to release or renew)."""

    token: str
    lock: str
    read: Any = None
    released: bool = False


class RedisLease:
    """`hold(session_id, keys, read)`: the lease on one session (`keys`: its lock, queue and
    waiters), and the session read as it is granted. `read`: the store's read of a session as a
    Lua function `read(keys, args)` after `redis_scripts.NOW` (the acquire reads its clock),
    run in the same call as the acquire that grants the lease (`hold`'s `read`: its keys and
    args)."""

    def __init__(
        self,
        client: Redis | RedisCluster,
        run: Run,
        lease_s: float,
        poll_max_s: float,
        read: str,
    ) -> None:
        self.lease_s = lease_s
        self.poll_max_s = poll_max_s
        self._run = run
        reg = client.register_script
        self._acquire = reg(read + _ACQUIRE)
        self._renew, self._release = reg(_RENEW), reg(_RELEASE)
        # a tombstone outlives any acquire still buffered when Redis resumes (the janitor runs as
        # soon as Redis answers, so both run within moments of each other)
        self.janitor = Janitor(run, reg(_FORGET), ms(max(60.0, 10 * lease_s)))

    @contextlib.asynccontextmanager
    async def hold(
        self,
        session_id: str,
        keys: tuple[str, str, str],
        read: tuple[list[str], list[Any]],
    ) -> AsyncIterator[Held]:
        token = secrets.token_hex(16)
        lk, q, w = keys
        mine = [lk, q, w, f"{lk}:x:{token}"]  # the tombstone shares the session's hash tag
        lease_ms = ms(self.lease_s)
        alive_ms = max(2000, ms(40 * self.poll_max_s))
        call_keys, args = mine + read[0], [token, lease_ms, alive_ms, *read[1]]
        delay = 0.001
        task = asyncio.current_task()
        try:
            while True:
                out = await self._run(self._acquire, call_keys, args)
                # redis-py can swallow a cancellation that lands mid-command; the task still
                # says it is being cancelled, and a waiter whose client left must not go on
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError
                if out[0]:
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.poll_max_s)
        except BaseException:
            # cancelled (client gone) or the store's deadline passed: the request ends now; its
            # place in the queue (or a lease granted in the meantime) is given up in the background
            self.janitor.forget(token, mine)
            raise
        held = Held(token, lk, out[1])
        # renewed from lease/3 on: a timer, not a task, for the many holds that end before
        # (a task made and cancelled per hold cost the client more than the timer)
        renewer: asyncio.Task[None] | None = None

        def renew() -> None:
            nonlocal renewer
            renewer = asyncio.get_running_loop().create_task(self._keep(session_id, held, lease_ms))

        timer = asyncio.get_running_loop().call_later(lease_ms / 3000, renew)
        try:
            yield held
        finally:
            timer.cancel()
            if renewer is not None:
                renewer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewer
            if not held.released:
                await self._give_up(session_id, held, mine)

    async def _give_up(self, session_id: str, held: Held, mine: list[str]) -> None:
        try:
            await self._run(self._release, [held.lock], [held.token])
        except StoreUnavailable:
            # the request's own work is done (committed or failed); it does not wait
            log.warning(
                "lease not released (store unavailable); released once Redis answers",
                extra={"session": session_id},
            )
            self.janitor.forget(held.token, mine)
        except asyncio.CancelledError:
            self.janitor.forget(held.token, mine)
            raise

    async def _keep(self, session_id: str, held: Held, lease_ms: int) -> None:
        while not held.released:
            try:
                renewed = await self._run(self._renew, [held.lock], [held.token, lease_ms])
            except StoreUnavailable:
                renewed = True  # the commit will fail with store_unavailable anyway
            if not renewed and not held.released:
                # Only reachable after a stall longer than the lease or a failover; the version
                # compare-and-set still refuses any stale commit.
                log.warning("session lease lost", extra={"session": session_id})
                return
            await asyncio.sleep(lease_ms / 3000)
