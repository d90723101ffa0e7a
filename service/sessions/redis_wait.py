"""Acknowledged writes on a replicated Redis (`RNNSERVE_REDIS_WAIT_REPLICAS`): a change to a
session is answered only once `replicas` replicas have it, so a failover never loses what was
acknowledged (docs/reliability.md).

`WAIT` counts the writes of its own connection, so the script and `WAIT` go down one pipeline on
one connection, and that connection never resends: a resent script finds its own write and
changes nothing, and `WAIT` on a new connection would then count nothing of it. On a cluster
that connection is a plain client of the primary holding the session's slot (the cluster
client's own connections are pooled per node and retried), found from the cluster client's
slot map, read again after a failover or a `MOVED`.
"""

from __future__ import annotations

import time
from typing import Any

from redis import exceptions as rx
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.errors import StoreUnavailable
from service.sessions.redis_errors import store_errors
from service.sessions.redis_scripts import ms


class ReplicaWait:
    def __init__(
        self,
        r: Redis | RedisCluster,
        client: Redis | RedisCluster,
        replicas: int,
        timeout_s: float,
        deadline_s: float,
        cluster: bool,
    ) -> None:
        self._r = r  # the store's client (a cluster's: its slot map)
        self._client = client  # one primary's connections that never resend
        self._cluster = cluster
        self.replicas, self.timeout_s, self.deadline_s = replicas, timeout_s, deadline_s
        self._node_clients: dict[tuple[str, int], Redis] = {}  # a cluster's primaries'
        self._slots_known = False  # the cluster client's slot map read since the last failure
        self._node_clients_used = False
        self._slots_read_at = 0.0

    async def run(self, script: Any, keys: list[str], args: list[Any]) -> tuple[Any, int]:
        """(the script's answer, the replicas that have it): the script and `WAIT` in one
        pipeline, on a connection that never resends (a resent script finds its own write and
        changes nothing, and `WAIT` on the new connection would then count nothing of it)."""
        for attempt in (1, 2):
            try:
                async with store_errors(self.deadline_s):
                    client = self._client if not self._cluster else await self._node_client(keys[0])
                    pipe = client.pipeline(transaction=False)
                    await script(keys=keys, args=args, client=pipe)
                    pipe.execute_command("WAIT", self.replicas, ms(self.timeout_s))
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

    async def close(self) -> None:
        for client in self._node_clients.values():
            await client.aclose()
        if self._client is not self._r:
            await self._client.aclose()
