"""`python -m bench.store`: the Redis session store on one primary against a Redis Cluster, side
by side, and what a session costs in Redis.

1. **Session steps/s** through `RedisStore`: each step is what a feed asks of the store (the
   session's lease, read, compare-and-set commit, release), from `--clients` concurrent sessions
   for `--seconds`, on one `redis-server` with a replica and on a cluster of 3 primaries with a
   replica each
   (the tests' local cluster, `tests/redis_cluster.py`), alternated `--rounds` times. Both with
   `appendonly yes` / `everysec`, as docs/deploy.md recommends. The ratio is the cluster's cost
   in the client (slot routing) and in the shards; on this 2-core machine the 6 nodes share the
   cores with the client, so no scaling out shows, only the overhead.
2. **Redis commands per step and per create**, from `INFO commandstats`.
3. **Redis bytes per idle session** for each shipped model (its real state and logits sizes),
   from `used_memory` over `--sessions` sessions on one primary.

Writes bench/.out/store-<UTC>.json and prints Markdown tables.

`--through-server` measures the same comparison where users see it: two rnnserve servers up at
once, A on the primary (with its replica), B on the cluster, `bench.ab`'s session step and 256
streams in interleaved rounds (`bench.ab --base HEAD --env-a ... --env-b ...`; its own flags
follow `--`, e.g. `-- --rounds 4`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import redis.asyncio

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / ".out"
sys.path.insert(0, str(REPO))  # the tests' local Redis and cluster (not part of the service)

from bench.procs import cpu_seconds  # noqa: E402
from service.contract import load_manifest, tokenizer_from_spec  # noqa: E402
from service.sessions.record import SessionRecord  # noqa: E402
from service.sessions.redis_store import RedisStore  # noqa: E402
from tests.loopback import (  # noqa: E402
    REDIS_SERVER,
    RedisProcess,
    RedisReplica,
    wait_until,
)
from tests.redis_cluster import RedisCluster  # noqa: E402


def _replica_of(primary: RedisProcess, folder: Path) -> RedisReplica:
    replica = RedisReplica(folder, primary.port)
    wait_until(lambda: "state=online" in _cli(primary.port, "INFO", "replication"), 30, "sync")
    return replica


def _cli(port: int, *args: str) -> str:
    cli = str(Path(REDIS_SERVER).with_name("redis-cli"))
    return subprocess.run([cli, "-p", str(port), *args], capture_output=True, text=True).stdout


def _record(sid: str, states: tuple[np.ndarray, ...], logits: np.ndarray | None) -> SessionRecord:
    now = time.time()
    return SessionRecord(sid, "m", "ab" * 32, 0, states, "", logits, now, 3600, now + 3600)


async def _steps(
    url: str, cluster: bool, clients: int, seconds: float, wait: int = 0
) -> dict[str, float]:
    store = RedisStore(url, 10**9, cluster=cluster, socket_timeout_s=5.0, wait_replicas=wait)
    states = (np.zeros((2, 1, 256), np.float32), np.zeros((2, 1, 256), np.float32))
    logits = np.zeros(65, np.float32)
    try:
        ids = [f"step-{cluster}-{i}-{time.monotonic_ns()}" for i in range(clients)]
        for sid in ids:
            await store.create(_record(sid, states, logits))
        done = 0
        stop_at = time.monotonic() + seconds

        async def client(sid: str) -> None:
            nonlocal done
            while time.monotonic() < stop_at:
                async with store.lock(sid):
                    rec = await store.get(sid)
                    await store.commit(rec.replace(version=rec.version + 1), rec.version)
                done += 1

        t0 = time.monotonic()
        await asyncio.gather(*(client(s) for s in ids))
        return {"steps_per_s": done / (time.monotonic() - t0)}
    finally:
        await store.close()


async def _commands(port: int) -> dict[str, int]:
    async with redis.asyncio.Redis(port=port) as r:
        stats = await r.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


async def _ops(url: str, port: int) -> dict[str, float]:
    """Commands per step and per create on one primary (what each store call sends)."""
    store = RedisStore(url, 10**9)
    states = (np.zeros((1, 1, 8), np.float32),)
    try:
        await store.create(_record("warm", states, None))
        async with store.lock("warm"):
            await store.commit((await store.get("warm")).replace(version=1), 0)
        n = 200
        before = await _commands(port)
        for i in range(n):
            await store.create(_record(f"ops-{i}", states, None))
        mid = await _commands(port)
        for i in range(n):
            async with store.lock(f"ops-{i}"):
                rec = await store.get(f"ops-{i}")
                await store.commit(rec.replace(version=1), 0)
        after = await _commands(port)
    finally:
        await store.close()

    def per(a: dict[str, int], b: dict[str, int], only: str | None = None) -> float:
        return sum(b.get(k, 0) - a.get(k, 0) for k in b if only in (None, k)) / n

    # round trips are the scripts (EVALSHA); Redis counts every command a script runs as well
    return {
        "scripts_per_create": per(before, mid, "evalsha"),
        "commands_per_create": per(before, mid),
        "scripts_per_step": per(mid, after, "evalsha"),
        "commands_per_step": per(mid, after),
    }


async def _bytes_per_session(url: str, port: int, sessions: int) -> dict[str, float]:
    out = {}
    for manifest_path in sorted((REPO / "models").glob("*/manifest.json")):
        man = load_manifest(manifest_path.parent)
        states = tuple(man.init_states(1))
        vocab = (
            len(man.labels)
            if man.labels is not None
            else tokenizer_from_spec(man.tokenizer).vocab_size
        )
        logits = np.zeros(vocab, np.float32)
        store = RedisStore(url, 10**9, key_prefix=f"size-{man.name}:")
        async with redis.asyncio.Redis(port=port) as r:
            await r.flushall()
            base = (await r.info("memory"))["used_memory"]
            for i in range(sessions):
                await store.create(_record(f"s{i}", states, logits))
            used = (await r.info("memory"))["used_memory"]
        await store.close()
        out[man.name] = (used - base) / sessions
    return out


@contextlib.contextmanager
def _stores() -> Iterator[tuple[RedisProcess, RedisReplica, RedisCluster]]:
    """One primary with a replica (as in production, and as each cluster shard has: the
    replication work is then the same on both sides) and a cluster of 3 primaries with a
    replica each, all local, for the block."""
    with tempfile.TemporaryDirectory() as tmp:
        one = RedisProcess(Path(tmp))
        one.start()
        replica = _replica_of(one, Path(tmp) / "replica")
        cluster = RedisCluster(Path(tmp) / "cluster")
        cluster.start()
        try:
            yield one, replica, cluster
        finally:
            cluster.stop()
            replica.stop()
            one.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sessions", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--through-server",
        action="store_true",
        help="run bench.ab with A's server on the primary, B's on the cluster",
    )
    ap.add_argument("ab_args", nargs="*", help="(after --) bench.ab's own arguments")
    args = ap.parse_args(argv)
    if args.through_server:
        return _through_server(args.ab_args)
    result: dict[str, Any] = {"clients": args.clients, "seconds": args.seconds}
    with _stores() as (one, replica, cluster):
        runs: dict[str, list[float]] = {"primary": [], "cluster": [], "cluster_wait": []}
        cpu: dict[str, dict[str, list[float]]] = {k: {"client": [], "redis": []} for k in runs}
        assert one.proc is not None
        servers = {
            "primary": [one.proc.pid, replica.proc.pid],
            "cluster": [p.pid for p in cluster.procs.values()],
        }
        for _ in range(args.rounds):
            for name, url, is_cluster, wait in (
                ("primary", one.url, False, 0),
                ("cluster", cluster.url, True, 0),
                ("cluster_wait", cluster.url, True, 1),  # RNNSERVE_REDIS_WAIT_REPLICAS=1
            ):
                pids = servers["cluster" if is_cluster else "primary"]
                c0, r0 = time.process_time(), cpu_seconds(pids)
                got = asyncio.run(_steps(url, is_cluster, args.clients, args.seconds, wait))
                steps = got["steps_per_s"] * args.seconds
                runs[name].append(got["steps_per_s"])
                # CPU per step (µs), the client's (this process) and the Redis processes'
                cpu[name]["client"].append(1e6 * (time.process_time() - c0) / steps)
                cpu[name]["redis"].append(1e6 * (cpu_seconds(pids) - r0) / steps)
        result["steps_per_s"] = runs
        result["cpu_us_per_step"] = cpu
        result |= asyncio.run(_ops(one.url, one.port))
        result["bytes_per_session"] = asyncio.run(
            _bytes_per_session(one.url, one.port, args.sessions)
        )
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or OUT / f"store-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    p, c, w = (
        statistics.median(result["steps_per_s"][k]) for k in ("primary", "cluster", "cluster_wait")
    )
    print(
        f"| store ({args.clients} sessions, {args.rounds} rounds) | steps/s (median) | rounds "
        "| client CPU µs/step | Redis CPU µs/step |"
    )
    print("|---|---|---|---|---|")
    for key, name, med in (
        ("primary", "one primary", p),
        ("cluster", "cluster, 3 primaries + 3 replicas", c),
        ("cluster_wait", "the cluster with WAIT 1 (acknowledged = on a replica)", w),
    ):
        rounds = ", ".join(f"{x:.0f}" for x in result["steps_per_s"][key])
        us = {k: statistics.median(v) for k, v in result["cpu_us_per_step"][key].items()}
        print(f"| {name} | {med:.0f} | {rounds} | {us['client']:.0f} | {us['redis']:.0f} |")
    print(f"\ncluster / primary: {c / p:.2f}; with WAIT 1: {w / p:.2f}")
    print(
        f"per create: {result['scripts_per_create']:.1f} scripts (round trips), "
        f"{result['commands_per_create']:.1f} Redis commands; per step: "
        f"{result['scripts_per_step']:.1f} scripts, {result['commands_per_step']:.1f} commands"
    )
    for name, b in result["bytes_per_session"].items():
        print(f"| {name} | {b:.0f} B/session |")
    print(out)
    return 0


def _through_server(ab_args: list[str]) -> int:
    """bench.ab, A's server with the primary (and its replica) as its store, B's with the
    cluster; both stores up for the whole run."""
    with _stores() as (one, _, cluster):
        store = "--env-a=RNNSERVE_STORE=redis", "--env-b=RNNSERVE_STORE=redis"
        cmd = [sys.executable, "-m", "bench.ab", "--base", "HEAD", *store]
        cmd += [f"--env-a=RNNSERVE_REDIS_URL={one.url}"]
        cmd += [
            f"--env-b=RNNSERVE_REDIS_URL={cluster.url}",
            "--env-b=RNNSERVE_REDIS_CLUSTER=true",
        ]
        return subprocess.run([*cmd, *ab_args], cwd=REPO).returncode


if __name__ == "__main__":
    raise SystemExit(main())
