"""How `RedisStore` connects: to one primary, to the primary a set of Sentinels names, or to a
Redis Cluster, with one deadline's socket timeouts and one quick retry on a fresh connection;
and the connections `WAIT` pipelines go down, which never resend (`redis_wait.py` says why)."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff, NoBackoff


def connect(
    url: str,
    socket_timeout_s: float,
    *,
    cluster: bool = False,
    sentinels: list[tuple[str, int]] | None = None,
    sentinel_master: str = "mymaster",
    wait_replicas: int = 0,
) -> tuple[Redis | RedisCluster, Redis | RedisCluster]:
    """(the store's client, the client its `WAIT` pipelines use)."""
    # one quick retry on a fresh connection: a pooled connection that died with a restarted
    # Redis is replaced instead of failing the request
    retry = Retry(ExponentialBackoff(cap=0.1, base=0.01), 1)
    timeouts: dict[str, Any] = {
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": min(socket_timeout_s, 1.0),
        "retry": retry,
    }
    # a primary found through Sentinel: its client asks the sentinels again for the primary
    # whenever a connection fails (a failover's new primary, on the next call)
    sentinel = (
        Sentinel(
            sentinels,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=min(socket_timeout_s, 1.0),
        )
        if sentinels
        else None
    )
    # redis-py's cluster client: slots, MOVED/ASK and failovers are its business (a
    # failed-over slot is found again on the next call)
    client: Redis | RedisCluster = (
        RedisCluster.from_url(url, **timeouts)
        if cluster
        else sentinel.master_for(sentinel_master, **timeouts)
        if sentinel is not None
        else Redis.from_url(url, health_check_interval=15, **timeouts)
    )
    if not wait_replicas or cluster:  # (a cluster's WAIT goes to each primary: `ReplicaWait`)
        return client, client
    no_resend = {**timeouts, "retry": Retry(NoBackoff(), 0)}
    wait_client = (
        sentinel.master_for(sentinel_master, **no_resend)
        if sentinel is not None
        else Redis.from_url(url, **no_resend)
    )
    return client, wait_client
