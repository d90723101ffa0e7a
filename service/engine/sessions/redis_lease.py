"""The per-session lease behind `RedisStore.lock`: operations on one session are serialized
across replicas, in arrival order.

A lease is `SET NX PX` renewed every lease/3 while held. Waiters queue in a sorted set (`:q`,
arrival order) and keep their place by polling (1 ms doubling to `poll_max_s`); their liveness
deadlines live in a hash (`:w`), so a waiter that died is skipped. A holder that dies (kill -9)
blocks the session for at most one lease. Mutual exclusion is for liveness only: if a lease is
ever lost (a pause longer than the lease, a failover), the store's compare-and-set on the version
still refuses the stale writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from service.engine.sessions.redis_scripts import NOW, ms
from service.errors import StoreUnavailable

log = logging.getLogger("rnnserve.sessions.redis")

# Runs a registered script with the store's error mapping (Redis errors -> StoreUnavailable).
Run = Callable[[Any, list[str], list[Any]], Awaitable[Any]]

# KEYS lock q w | ARGV token lease_ms alive_ms  -> 1 granted, 0 wait
# (already holding it means granted: a resent call whose first reply was lost)
_ACQUIRE = (
    NOW
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


class RedisLease:
    """`hold(session_id, keys)`: the lease on one session (`keys`: its lock, queue and waiters)."""

    def __init__(self, client: Redis, run: Run, lease_s: float, poll_max_s: float) -> None:
        self.lease_s = lease_s
        self.poll_max_s = poll_max_s
        self._run = run
        reg = client.register_script
        self._acquire, self._leave = reg(_ACQUIRE), reg(_LEAVE)
        self._renew, self._release = reg(_RENEW), reg(_RELEASE)

    @contextlib.asynccontextmanager
    async def hold(self, session_id: str, keys: tuple[str, str, str]) -> AsyncIterator[None]:
        token = secrets.token_hex(16)
        lk, q, w = keys
        lease_ms = ms(self.lease_s)
        alive_ms = max(2000, ms(40 * self.poll_max_s))
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
                delay = min(delay * 2, self.poll_max_s)
        except BaseException:
            # cancelled (client gone) or store down while queued: give up our place
            with contextlib.suppress(Exception):
                await self._run(self._leave, [q, w], [token])
            raise
        renewer = asyncio.create_task(self._keep(session_id, lk, token, lease_ms))
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

    async def _keep(self, session_id: str, key: str, token: str, lease_ms: int) -> None:
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
