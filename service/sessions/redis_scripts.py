"""The Lua scripts behind `RedisStore`: every multi-key change of a session is one script, so it
is atomic however many replicas share the Redis.

Each script reads the server's clock (`TIME`, ms) itself, so replicas never compare clocks.
Redis refuses a script's writes for OOM only until its first write succeeds, so each script's
first write is the one that grows memory: reads (ZCOUNT) decide, pruning comes after.

Owner sets: a session created with an owner stores in its hash field `o` the name of its
owner's sorted set (`{prefix}own:<owner>`, id -> expiry ms, like `{prefix}live`). Every script
that refreshes, deletes or evicts the session updates that set too, so its scores stay the
sessions' expiries and `ZCOUNT (now +inf` is the owner's live count without any pruning. These
scripts name keys they derive (owner sets, eviction victims): the store needs one primary, not a
cluster unless those keys share the session's slot: in a cluster (`RedisStore(cluster=True)`)
the live and owner sets are per bucket, and a session's keys carry its bucket's hash tag.
"""

from __future__ import annotations


def ms(seconds: float) -> int:
    """Seconds as the whole milliseconds (at least 1) the scripts take."""
    return max(1, round(seconds * 1000))


NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Keep an owner set alive at least as long as its latest member (it expires with its sessions).
_TOUCH_OWNER = """
local function touch_owner(own, id, ttl)
  redis.call('ZADD', own, now + ttl, id)
  if redis.call('PTTL', own) < ttl then redis.call('PEXPIRE', own, ttl) end
end
"""

# The least recently used session of a live set that no request holds, evicted: its keys go, its
# marker says "evicted" for `extra_ms`; '' when every one is held (or the set is empty).
_EVICT_ONE = """
local function evict_one(live, head, tail, extra_ms)
  for _, c in ipairs(redis.call('ZRANGEBYSCORE', live, '(' .. now, '+inf', 'LIMIT', 0, 64)) do
    local k = head .. c .. tail
    if redis.call('EXISTS', k .. 'lock') == 0 then
      local o = redis.call('HGET', k .. 's', 'o')
      redis.call('DEL', k .. 's', k .. 'i')
      redis.call('SET', k .. 'g', 'evicted', 'PX', extra_ms)
      redis.call('ZREM', live, c)
      if o then redis.call('ZREM', o, c) end
      return c
    end
  end
  return ''
end
"""

# KEYS s g i live [own] | ARGV id v st m ttl_ms extra_ms max evict head nonce max_own tail
# `own` (the owner's set) is given only for a session with an owner; `max_own` 0 = no per-owner
# cap. The per-owner check comes first, so a refused create never evicts anybody. A session `c`
# of the same live set has its keys at `head .. c .. tail .. kind` (the layout's: one primary,
# or a cluster bucket's slot).
CREATE = (
    NOW
    + _TOUCH_OWNER
    + _EVICT_ONE
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'w') == ARGV[10] then return {'ok', tostring(now), '', '0'} end
  return {'exists'}
end
local own = KEYS[5]
local max_own = tonumber(ARGV[11])
if own and max_own > 0 and redis.call('ZCOUNT', own, '(' .. now, '+inf') >= max_own then
  return {'owner_limit'}
end
local evicted = ''
if redis.call('ZCOUNT', KEYS[4], '(' .. now, '+inf') >= tonumber(ARGV[7]) then
  if ARGV[8] ~= 'lru' then return {'limit'} end
  evicted = evict_one(KEYS[4], ARGV[9], ARGV[12], ARGV[6])
  if evicted == '' then return {'limit'} end
end
local ttl = tonumber(ARGV[5])
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'st', ARGV[3], 'm', ARGV[4], 't', ARGV[5], 'w', ARGV[10])
if own then redis.call('HSET', KEYS[1], 'o', own) end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('SET', KEYS[2], 'live', 'PX', ttl + tonumber(ARGV[6]))
redis.call('DEL', KEYS[3])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
redis.call('ZADD', KEYS[4], now + ttl, ARGV[1])
if own then
  redis.call('ZREMRANGEBYSCORE', own, '-inf', now)
  touch_owner(own, ARGV[1], ttl)
end
return {'ok', tostring(now), evicted, tostring(redis.call('ZCARD', KEYS[4]))}
"""
)

# `read(keys, args)`: KEYS s g live [i] | ARGV id extra_ms [idem_key] -> {'missing', marker} or
# {'ok', now, v, st, m[, the idempotency record of idem_key or nil]}. A session read touches it
# (its idle TTL starts again). Also run by the lease's acquire, in the same call
# (`RedisLease.hold`'s `read`), where a request with an `Idempotency-Key` reads its record too.
READ = (
    NOW
    + _TOUCH_OWNER
    + """
local function read(keys, args)
  local s, g, live, id = keys[1], keys[2], keys[3], args[1]
  if redis.call('EXISTS', s) == 0 then return {'missing', redis.call('GET', g) or ''} end
  local h = redis.call('HMGET', s, 'v', 'st', 'm', 't', 'o')
  local ttl = tonumber(h[4])
  redis.call('PEXPIRE', s, ttl)
  redis.call('SET', g, 'live', 'PX', ttl + tonumber(args[2]))
  redis.call('ZADD', live, now + ttl, id)
  if h[5] then touch_owner(h[5], id, ttl) end
  if not keys[4] then return {'ok', tostring(now), h[1], h[2], h[3]} end
  return {'ok', tostring(now), h[1], h[2], h[3], redis.call('HGET', keys[4], args[3])}
end
"""
)

# KEYS s g live | ARGV id extra_ms
GET = READ + "return read(KEYS, ARGV)\n"

# KEYS s g i live [lock done] | ARGV id expected new st m ttl_ms extra_ms idem_key idem_val
# idem_ttl_ms nonce [token done_ms]
# (`nonce` is unique per commit call: a network retry of the same call finds its own write;
# `lock` and `token`: the caller's lease on the session, given up in the same call whatever
# the outcome, as the caller's last store call under it. Then another holder may commit before
# a retry of this call arrives, so the retry could no longer tell its own write by the version
# and nonce: `done`, this call's own key in the session's slot, says it was applied, for
# `done_ms`)
COMMIT = (
    NOW
    + _TOUCH_OWNER
    + """
local function commit()
  if redis.call('EXISTS', KEYS[1]) == 0 then
    return {'missing', redis.call('GET', KEYS[2]) or ''}
  end
  local cur = redis.call('HGET', KEYS[1], 'v')
  if cur ~= ARGV[2] then
    if cur == ARGV[3] and redis.call('HGET', KEYS[1], 'w') == ARGV[11] then
      return {'ok', tostring(now)}
    end
    return {'conflict', cur}
  end
  local ttl = tonumber(ARGV[6])
  redis.call('HSET', KEYS[1], 'v', ARGV[3], 'st', ARGV[4], 'm', ARGV[5], 't', ARGV[6],
             'w', ARGV[11])
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('SET', KEYS[2], 'live', 'PX', ttl + tonumber(ARGV[7]))
  redis.call('ZADD', KEYS[4], now + ttl, ARGV[1])
  local own = redis.call('HGET', KEYS[1], 'o')
  if own then touch_owner(own, ARGV[1], ttl) end
  if ARGV[8] ~= '' then
    redis.call('HSET', KEYS[3], ARGV[8], ARGV[9])
    if redis.call('PTTL', KEYS[3]) < tonumber(ARGV[10]) then
      redis.call('PEXPIRE', KEYS[3], ARGV[10])
    end
    -- bounded cleanup (like Redis's own expiry): sample a few records, drop the expired ones
    if redis.call('HLEN', KEYS[3]) > 64 then
      for _, f in ipairs(redis.call('HRANDFIELD', KEYS[3], 16)) do
        local v = redis.call('HGET', KEYS[3], f)
        if v and tonumber(string.match(v, '^(%d+)|')) <= now then redis.call('HDEL', KEYS[3], f) end
      end
    end
  end
  return {'ok', tostring(now)}
end
if KEYS[6] and redis.call('EXISTS', KEYS[6]) == 1 then return {'ok', tostring(now)} end
local out = commit()
if KEYS[5] then
  if redis.call('GET', KEYS[5]) == ARGV[12] then redis.call('DEL', KEYS[5]) end
  if out[1] == 'ok' then redis.call('SET', KEYS[6], '1', 'PX', ARGV[13]) end
end
return out
"""
)

# KEYS live | ARGV head tail extra_ms -> the id evicted, or ''
# (a cluster at its cap, whose new session's own bucket had nobody to evict: one of another's)
EVICT = (
    NOW
    + _EVICT_ONE
    + """
return evict_one(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
"""
)

# KEYS i | ARGV field -> the stored record, or nil. A record found is touched (its own TTL set
# again): a write, so a `WAIT` after it covers the change the record answers for (a replay is
# acknowledged only once what it replays is on the replicas).
GET_IDEM = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then
  local t = redis.call('PTTL', KEYS[1])
  if t > 0 then redis.call('PEXPIRE', KEYS[1], t) end
end
return v
"""

# KEYS i | ARGV field value ttl_ms
PUT_IDEM = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 1
"""

# KEYS s g i live | ARGV id  (deleting frees the session's place in its owner's set at once)
DELETE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing', redis.call('GET', KEYS[2]) or ''} end
local own = redis.call('HGET', KEYS[1], 'o')
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[1])
if own then redis.call('ZREM', own, ARGV[1]) end
return {'ok', tostring(redis.call('ZCARD', KEYS[4]))}
"""

# KEYS live | -> {removed, live}
# (owner sets need no sweep: an expired member no longer counts, and a set expires with its
# latest session; `create` prunes the creator's set)
SWEEP = (
    NOW
    + """
local removed = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return {removed, redis.call('ZCARD', KEYS[1])}
"""
)
