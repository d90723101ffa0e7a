"""A real `redis-server` fixture (skipped without the binary; `tests/loopback.py` runs it), and
what the store tests share: two `RedisStore` "replicas" on one server, and a sample session
record."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.sessions import SessionRecord
from service.sessions.redis_store import RedisStore
from tests.loopback import REDIS_SERVER, RedisProcess
from tests.redis_cluster import RedisCluster


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is not installed (scripts/system-deps.sh installs it)")
    server = RedisProcess(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def _cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is not installed (scripts/system-deps.sh installs it)")
    cluster = RedisCluster(tmp_path_factory.mktemp("cluster"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


Target = RedisProcess | RedisCluster


@pytest.fixture(params=["primary", "cluster"])
def any_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """The store contract runs on both: one Redis primary (this test's own), and a Redis Cluster
    of 3 primaries with a replica each (one per module, emptied before each test, started again
    if a test stopped it)."""
    if request.param == "primary":
        yield request.getfixturevalue("redis_server")
        return
    cluster: RedisCluster = request.getfixturevalue("_cluster")
    if not cluster.procs:
        cluster.start()
    cluster.flush()
    yield cluster


@contextlib.asynccontextmanager
async def two_stores(url: str | Target, **kw: Any) -> AsyncIterator[tuple[RedisStore, RedisStore]]:
    """Two stores ("replicas") on one Redis; they share nothing but the server."""
    if not isinstance(url, str):  # a target: a primary or a cluster
        kw["cluster"] = url.cluster
        url = url.url
    a = RedisStore(url, 100, socket_timeout_s=1.0, **kw)
    b = RedisStore(url, 100, socket_timeout_s=1.0, **kw)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


def rec(sid: str, ttl: float = 30.0, version: int = 0, fill: float = 0.0) -> SessionRecord:
    now = time.time()
    return SessionRecord(
        sid,
        "m",
        "ab" * 32,
        version,
        (np.full((1, 1, 3), fill, np.float32), np.arange(6, dtype=np.float32).reshape(2, 1, 3)),
        "unfinished wo",
        np.linspace(-1, 1, 5).astype(np.float32),
        now,
        ttl,
        now + ttl,
        owner="key-1",
        tokens_seen=7,
    )
