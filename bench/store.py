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

`--redis-cpus 1` runs every Redis process on CPU 1 and the rest (the store's client, the
servers, the load) on the other CPUs: Redis on a core of its own, as it would be on machines of
its own, instead of six `redis-server`s taking the servers' cores on a small machine. (The
Redis processes: `bench/redis_stores.py`.)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis.asyncio

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / ".out"
sys.path.insert(0, str(REPO))  # (run as a script: the tree's packages first)

from bench import redis_stores  # noqa: E402
from bench.procs import cpu_seconds  # noqa: E402
from service.contract import load_manifest, tokenizer_from_spec  # noqa: E402
from service.sessions.record import SessionRecord  # noqa: E402
from service.sessions.redis_store import RedisStore  # noqa: E402


def _record(sid: str, states: tuple[np.ndarray, ...], logits: np.ndarray | None) -> SessionRecord:
    now = time.time()
    return SessionRecord(sid, "m", "ab" * 32, 0, states, "", logits, now, 3600, now + 3600)


# One store's session steps in a process of its own, from a tree's `service` (`-c` puts the
# working directory first on sys.path), so that `--base` measures a baseline's store beside
# this tree's on the same Redis. Prints {"steps_per_s", "cpu_s"}: the client's CPU over the loop.
STEPS = """
import asyncio, json, sys, time
import numpy as np
from service.sessions.record import IdempotencyRecord, SessionRecord
from service.sessions.redis_store import RedisStore

url, cluster, keyed = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1"
clients, seconds, wait = map(float, sys.argv[4:])

def record(sid, states, logits):
    now = time.time()
    return SessionRecord(sid, "m", "ab" * 32, 0, states, "", logits, now, 3600, now + 3600)

async def main():
    store = RedisStore(url, 10**9, cluster=cluster, socket_timeout_s=5.0, wait_replicas=int(wait))
    states = (np.zeros((2, 1, 256), np.float32), np.zeros((2, 1, 256), np.float32))
    logits = np.zeros(65, np.float32)
    try:
        ids = [f"step-{cluster}-{i}-{time.monotonic_ns()}" for i in range(int(clients))]
        for sid in ids:
            await store.create(record(sid, states, logits))
        done = 0
        stop_at = time.monotonic() + seconds

        async def client(sid):
            nonlocal done
            while time.monotonic() < stop_at:
                if not keyed:
                    async with store.lock(sid):
                        rec = await store.get(sid)
                        await store.commit(rec.replace(version=rec.version + 1), rec.version)
                    done += 1
                    continue
                # a feed with an Idempotency-Key: its record looked up, and stored with the commit
                key = f"k{done}"
                try:
                    lock = store.lock(sid, key)
                except TypeError:  # (a tree whose lock takes no key)
                    lock = store.lock(sid)
                async with lock:
                    rec = await store.get(sid)
                    assert await store.get_idempotent(sid, key) is None
                    new = rec.replace(version=rec.version + 1)
                    idem = (key, IdempotencyRecord("fp", {"v": new.version}, time.time() + 60))
                    await store.commit(new, rec.version, idem)
                done += 1

        t0, c0 = time.monotonic(), time.process_time()
        await asyncio.gather(*(client(s) for s in ids))
        took, cpu = time.monotonic() - t0, time.process_time() - c0
        return {"steps_per_s": done / took, "cpu_s": cpu * seconds / took, "steps": done}
    finally:
        await store.close()

print(json.dumps(asyncio.run(main())))
"""


def _steps(
    tree: Path,
    url: str,
    cluster: bool,
    clients: int,
    seconds: float,
    wait: int = 0,
    keyed: bool = False,
) -> dict[str, float]:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            STEPS,
            url,
            str(int(cluster)),
            str(int(keyed)),
            str(clients),
            str(seconds),
            str(wait),
        ],
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    got: dict[str, float] = json.loads(out)
    return got


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
    ap.add_argument(
        "--redis-cpus",
        type=lambda v: {int(c) for c in v.split(",")},
        help="CPUs (e.g. 1, or 2,3) that every Redis process runs on, the servers and the "
        "load on the others: Redis on cores of its own, as on machines of its own",
    )
    ap.add_argument(
        "--keyed",
        action="store_true",
        help="each step as a feed with an Idempotency-Key asks it: its record looked up, and "
        "stored with the commit",
    )
    ap.add_argument(
        "--base",
        help="a git ref whose store is measured beside this tree's (A = base, B = tree), "
        "rounds interleaved on the same Redis processes",
    )
    args = ap.parse_args(argv)
    if args.redis_cpus is not None and not args.redis_cpus < os.sched_getaffinity(0):
        ap.error("--redis-cpus must leave this process a CPU of its own")
    if args.through_server:
        return _through_server(args.ab_args, args.redis_cpus)
    trees = [("B", REPO)]
    if args.base:
        from bench.ab import worktree

        trees.insert(0, ("A", worktree(args.base)))
    result: dict[str, Any] = {
        "keyed": args.keyed,
        "clients": args.clients,
        "seconds": args.seconds,
        "trees": {t: str(path) for t, path in trees},
        "base": args.base,
    }
    stores = (
        ("primary", False, 0),
        ("cluster", True, 0),
        ("cluster_wait", True, 1),  # RNNSERVE_REDIS_WAIT_REPLICAS=1
    )
    runs: dict[str, dict[str, list[float]]] = {
        f"{t}:{name}": {"steps_per_s": [], "client": [], "redis": []}
        for t, _ in trees
        for name, *_ in stores
    }
    with redis_stores.stores(args.redis_cpus) as (one, replica, cluster):
        assert one.proc is not None
        servers = {
            "primary": [one.proc.pid, replica.proc.pid],
            "cluster": [p.pid for p in cluster.procs.values()],
        }
        for _ in range(args.rounds):
            for name, is_cluster, wait in stores:
                for t, tree in trees:
                    pids = servers["cluster" if is_cluster else "primary"]
                    url = cluster.url if is_cluster else one.url
                    r0 = cpu_seconds(pids)
                    got = _steps(
                        tree, url, is_cluster, args.clients, args.seconds, wait, args.keyed
                    )
                    run = runs[f"{t}:{name}"]
                    run["steps_per_s"].append(got["steps_per_s"])
                    # CPU per step (µs), the client's and the Redis processes'
                    run["client"].append(1e6 * got["cpu_s"] / got["steps"])
                    run["redis"].append(1e6 * (cpu_seconds(pids) - r0) / got["steps"])
        result["runs"] = runs
        result |= asyncio.run(_ops(one.url, one.port))
        result["bytes_per_session"] = asyncio.run(
            _bytes_per_session(one.url, one.port, args.sessions)
        )
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or OUT / f"store-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(
        f"| tree | store ({args.clients} sessions, {args.rounds} rounds) | steps/s (median) "
        "| rounds | client CPU µs/step | Redis CPU µs/step |"
    )
    print("|---|---|---|---|---|---|")
    labels = {
        "primary": "one primary",
        "cluster": "cluster, 3 primaries + 3 replicas",
        "cluster_wait": "the cluster with WAIT 1 (acknowledged = on a replica)",
    }
    med = {k: statistics.median(v["steps_per_s"]) for k, v in runs.items()}
    for name, *_ in stores:
        for t, _ in trees:
            run = runs[f"{t}:{name}"]
            rounds = ", ".join(f"{x:.0f}" for x in run["steps_per_s"])
            client, redis_us = statistics.median(run["client"]), statistics.median(run["redis"])
            tree = f"A: {args.base}" if t == "A" else "B: this tree"
            print(
                f"| {tree} | {labels[name]} | {med[f'{t}:{name}']:.0f} | {rounds} "
                f"| {client:.0f} | {redis_us:.0f} |"
            )
    for t, _ in trees:
        p, c, w = (med[f"{t}:{k}"] for k in ("primary", "cluster", "cluster_wait"))
        print(f"\n{t}: cluster / primary: {c / p:.2f}; with WAIT 1: {w / p:.2f}")
    if args.base:
        for name, *_ in stores:
            ratios = [
                b / a
                for a, b in zip(
                    runs[f"A:{name}"]["steps_per_s"], runs[f"B:{name}"]["steps_per_s"], strict=True
                )
            ]
            print(f"B/A {labels[name]}: {statistics.median(ratios):.2f} (median of per-round)")
    print(
        f"this tree, per create: {result['scripts_per_create']:.1f} scripts (round trips), "
        f"{result['commands_per_create']:.1f} Redis commands; per step: "
        f"{result['scripts_per_step']:.1f} scripts, {result['commands_per_step']:.1f} commands"
    )
    for name, b in result["bytes_per_session"].items():
        print(f"| {name} | {b:.0f} B/session |")
    print(out)
    return 0


def _through_server(ab_args: list[str], redis_cpus: set[int] | None) -> int:
    """bench.ab, A's server with the primary (and its replica) as its store, B's with the
    cluster; both stores up for the whole run."""
    with redis_stores.stores(redis_cpus) as (one, _, cluster):
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
