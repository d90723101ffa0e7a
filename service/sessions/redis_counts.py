"""The live-session counts of the Redis store (`redis_store.py`): the caps checked at create, the
gauge, the sweep, and the sessions of one graph (an unload's drain).

On one primary the create script counts and checks the caps itself (one `live` set, one set
per owner). On a cluster each script sees only its bucket's sets (`Layout`), so the counts are
summed over the buckets (one pipeline: a round trip per shard) just before a create and handed
to its script as the caps left; a shard that does not answer counts as last read. Creates racing
on several replicas can then pass a cap by as many as race (docs/deploy.md).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis import exceptions as rx
from redis.asyncio import Redis, RedisCluster

from service.errors import StoreUnavailable
from service.sessions.blob import decode_state
from service.sessions.redis_errors import store_errors
from service.sessions.redis_layout import Layout
from service.sessions.redis_scripts import ms
from service.sessions.store import Clock, owner_limit

Run = Callable[[Any, list[str], list[Any]], Awaitable[Any]]  # a script, its keys and args


class LiveCounts:
    def __init__(
        self,
        r: Redis | RedisCluster,
        layout: Layout,
        run: Run,
        sweep_script: Any,
        evict_script: Any,
        clock: Clock,
        deadline_s: float,
        expired_memory_s: float,
        on_evict: Callable[[str], None] | None,
    ) -> None:
        self._r, self.layout, self._run = r, layout, run
        self._sweep, self._evict = sweep_script, evict_script
        self.clock, self.deadline_s, self.expired_memory_s = clock, deadline_s, expired_memory_s
        self._on_evict = on_evict
        self.cluster = layout.buckets is not None
        # a cluster's summed live count as last read (for the gauge), and when
        self._live_seen: tuple[float, int] | None = None
        self._seen_counts: dict[str, int] = {}  # each set's live count as last read

    async def _sums(self, *groups: list[str]) -> list[int]:
        """Live members of each group of sets, summed (one pipeline: a round trip per shard).
        A set whose shard does not answer (a failover under way) counts as last read, so one
        shard down does not stop creates on the others; none answering is 503."""
        now = f"({round(self.clock() * 1000)}"
        keys = [k for group in groups for k in group]
        async with store_errors(self.deadline_s):
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

    async def caps(
        self, owner: str | None, max_sessions: int, max_per_owner: int | None, evict: str
    ) -> tuple[int, int]:
        """The (global, owner) caps to hand the create script of one bucket, which sees only
        its bucket: the counts summed over every bucket just before, checked here. At the
        global cap the script gets 0 (it then evicts from its bucket with `lru`, or refuses).
        Unlike on one primary, creates racing on several replicas can pass a cap by as many as
        are racing (docs/deploy.md)."""
        owns = self.layout.owns(owner) if owner and max_per_owner is not None else []
        live, owned = await self._sums(self.layout.lives(), owns)
        self._live_seen = (time.monotonic(), live)
        if owns and max_per_owner is not None and owned >= max_per_owner:
            raise owner_limit(max_per_owner)
        if live < max_sessions or (evict == "lru" and await self._evict_oldest()):
            return 2**53, 0
        return 0, 0  # (the script refuses: 'limit')

    async def _evict_oldest(self) -> bool:
        """A cluster at its cap: the least recently used session that no request holds goes,
        whichever bucket it is in (each bucket's oldest are read, then tried oldest first)."""
        lives = self.layout.lives()
        async with store_errors(self.deadline_s):
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
                self.counted(0, -1)
                return True
        return False

    def counted(self, in_set: int, delta: int) -> int:
        """The live count after a create (+1) or delete (-1), for the gauge: the set's own
        count on one primary; a cluster's sum as last read, moved by this replica's changes
        since (the sweep reads it again)."""
        if not self.cluster:
            return in_set
        if self._live_seen is None:
            return -1  # not read yet: the gauge waits for the sweep
        self._live_seen = (self._live_seen[0], max(0, self._live_seen[1] + delta))
        return self._live_seen[1]

    async def sweep_all(self) -> tuple[int, int]:
        """Expired members dropped from every live set: (removed, live)."""
        removed = live = 0
        for key in self.layout.lives():
            r, n = await self._run(self._sweep, [key], [])
            removed, live = removed + int(r), live + int(n)
        if self.cluster:
            self._live_seen = (time.monotonic(), live)
        return removed, live

    async def count_graph(self, want: str, page: int) -> int:
        """Live sessions of the graph `want` (`<model>/<sha256>`), from each one's small meta
        field (not its state), a page at a time."""
        found = 0
        for live in self.layout.lives():
            found += await self._count_graph_in(live, want, page)
        return found

    async def _count_graph_in(self, live: str, want: str, page: int) -> int:
        found, start = 0, 0
        async with store_errors(self.deadline_s):
            while True:
                ids = await self._r.zrange(live, start, start + page - 1)
                if not ids:
                    return found
                names = [sid.decode() if isinstance(sid, bytes) else str(sid) for sid in ids]
                pipe = self._r.pipeline(transaction=False)
                for sid in names:
                    pipe.hget(self.layout.key(sid, "s"), "m")  # the small meta field, not the state
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
                    st = await self._r.hget(self.layout.key(sid, "s"), "st")
                    if isinstance(st, bytes):
                        b = decode_state(st)
                        found += f"{b.model}/{b.model_sha256}" == want
                start += page
