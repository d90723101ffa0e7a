"""How the Redis store connects (`redis_clients.py`): one deadline's socket timeouts and one
quick retry for the store's calls; `WAIT` pipelines on connections of their own that never
resend, except on a cluster (whose `WAIT` goes to each primary). No server is needed: redis-py
connects on the first command."""

from __future__ import annotations

from redis.asyncio import Redis, RedisCluster

from service.sessions.redis_clients import connect


def _kwargs(client: Redis) -> dict[str, object]:
    return dict(client.connection_pool.connection_kwargs)


async def test_the_store_retries_once_and_its_wait_pipelines_never_resend() -> None:
    client, waits = connect("redis://127.0.0.1:1/0", 2.0, wait_replicas=1)
    assert isinstance(client, Redis) and isinstance(waits, Redis) and client is not waits
    store, wait = _kwargs(client), _kwargs(waits)
    assert store["socket_timeout"] == wait["socket_timeout"] == 2.0
    assert store["socket_connect_timeout"] == 1.0
    assert client.get_retry().get_retries() == 1  # type: ignore[union-attr]
    assert waits.get_retry().get_retries() == 0  # type: ignore[union-attr]
    await client.aclose()
    await waits.aclose()


async def test_without_wait_or_on_a_cluster_one_client_serves_both() -> None:
    client, waits = connect("redis://127.0.0.1:1/0", 0.5)
    assert client is waits and _kwargs(client)["socket_connect_timeout"] == 0.5
    await client.aclose()
    client, waits = connect("redis://127.0.0.1:1/0", 0.5, cluster=True, wait_replicas=1)
    assert isinstance(client, RedisCluster) and client is waits
    await client.aclose()
