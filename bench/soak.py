"""Soak test (not CI): a bounded mixed load on loopback for N minutes; memory and latency drift.

    .venv/bin/python -m bench.soak --minutes 10          # the issue's run
    .venv/bin/python -m bench.soak --minutes 2 --probe-s 15

1. starts `rnnserve` (service.server) on a free loopback port, with API keys on;
2. probes capacity: the mix, closed loop, `--workers` at a time, for `--probe-s` seconds;
3. soaks: the same mix as an open loop at `--load` (default 80 %) of the probed rate, at most
   `--max-inflight` at once, for `--minutes`;
4. samples the server's RSS every 5 s and reports RSS growth (after the first minute: warm-up),
   errors, and latency percentiles per operation in the first and the last third.

The mix: classifier predictions, stateless SSE generations, a session lifecycle (create, three
feeds, a generate, export, delete), WebSocket sessions (feed + generate), and streams the client
drops after a few tokens (disconnects). Results: bench/.out/soak-<UTC>.json and a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import websockets

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / ".out"
KEY = "soak-key-0123456789abcdef"
LM, CLS = "tiny-char-lstm", "tiny-sentiment-gru"
TEXTS = [
    "a gripping, beautiful film",
    "dull and far too long",
    "I expected to hate this movie, but the acting was superb",
    "the plot was thin",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Soak:
    def __init__(self, base: str, rnd: random.Random) -> None:
        self.base = base
        self.rnd = rnd
        self.lat: dict[str, list[tuple[float, float]]] = defaultdict(list)  # op -> (t, s)
        self.errors: list[str] = []
        self.count = 0
        self.h = {"Authorization": f"Bearer {KEY}"}

    def ok(self, r: httpx.Response, *codes: int) -> None:
        if r.status_code not in (codes or (200,)):
            raise RuntimeError(
                f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text[:200]}"
            )

    async def predict(self, c: httpx.AsyncClient) -> None:
        n = self.rnd.randint(1, 4)
        r = await c.post(f"/v1/models/{CLS}/predict", json={"inputs": self.rnd.sample(TEXTS, n)})
        self.ok(r)

    async def stream(self, c: httpx.AsyncClient) -> None:
        body = {"prompt": "ROMEO:", "max_tokens": 48, "stream": True}
        async with c.stream("POST", f"/v1/models/{LM}/generate", json=body) as r:
            self.ok(r)
            text = "".join([chunk async for chunk in r.aiter_text()])
        if not text.rstrip().endswith("data: [DONE]") or "event: error" in text:
            raise RuntimeError("stream did not end with done + [DONE]")

    async def disconnect(self, c: httpx.AsyncClient) -> None:
        body = {"prompt": "To be", "max_tokens": 400, "stream": True}
        async with c.stream("POST", f"/v1/models/{LM}/generate", json=body) as r:
            self.ok(r)
            seen = 0
            async for _ in r.aiter_lines():
                seen += 1
                if seen > self.rnd.randint(2, 30):
                    break  # leaving the block closes the connection mid-stream

    async def session(self, c: httpx.AsyncClient) -> None:
        r = await c.post("/v1/sessions", json={"model": LM, "ttl_s": 120})
        self.ok(r, 201)
        sid = r.json()["session_id"]
        try:
            for i, piece in enumerate(("To be, ", "or not ", "to be")):
                h = {"Idempotency-Key": f"{sid}-{i}"}
                self.ok(await c.post(f"/v1/sessions/{sid}/feed", json={"text": piece}, headers=h))
            self.ok(await c.post(f"/v1/sessions/{sid}/generate", json={"max_tokens": 24}))
            self.ok(await c.get(f"/v1/sessions/{sid}/state"))
        finally:
            self.ok(await c.delete(f"/v1/sessions/{sid}"), 204)

    async def websocket(self, c: httpx.AsyncClient) -> None:
        r = await c.post("/v1/sessions", json={"model": LM, "ttl_s": 120})
        self.ok(r, 201)
        sid = r.json()["session_id"]
        url = self.base.replace("http://", "ws://") + f"/v1/sessions/{sid}/ws"
        try:
            async with websockets.connect(url, additional_headers=self.h) as ws:
                await ws.send(json.dumps({"type": "feed", "text": "Hello, "}))
                if json.loads(await ws.recv())["type"] != "result":
                    raise RuntimeError("ws feed failed")
                await ws.send(json.dumps({"type": "generate", "max_tokens": 16}))
                while (msg := json.loads(await ws.recv()))["type"] == "token":
                    pass
                if msg["type"] != "done":
                    raise RuntimeError(f"ws generate: {msg}")
        finally:
            self.ok(await c.delete(f"/v1/sessions/{sid}"), 204)

    def mix(self) -> list[tuple[str, Callable[[httpx.AsyncClient], Awaitable[None]], int]]:
        return [
            ("predict", self.predict, 40),
            ("stream", self.stream, 20),
            ("session", self.session, 20),
            ("websocket", self.websocket, 10),
            ("disconnect", self.disconnect, 10),
        ]

    async def one(self, c: httpx.AsyncClient, t_start: float) -> None:
        ops = self.mix()
        name, fn, _ = self.rnd.choices(ops, weights=[w for *_, w in ops])[0]
        t0 = time.perf_counter()
        try:
            await fn(c)
        except Exception as e:
            self.errors.append(f"{name}: {type(e).__name__}: {e}"[:300])
        else:
            self.lat[name].append((t0 - t_start, time.perf_counter() - t0))
        self.count += 1


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1e3


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    models = REPO / "models" if (REPO / "models" / LM).exists() else REPO / "tests/fixtures/models"
    env = {
        **os.environ,
        "RNNSERVE_MODELS_DIR": str(models),
        "RNNSERVE_PORT": str(port),
        "RNNSERVE_LOG_LEVEL": "warning",
        "RNNSERVE_API_KEYS": f"soak:{KEY}",
        "RNNSERVE_MAX_STREAMS_PER_KEY": "1000",
    }
    cmd = [sys.executable, "-c", "from service.server import serve; serve()"]
    OUT.mkdir(parents=True, exist_ok=True)
    log = (OUT / "soak-server.log").open("w")
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=log)
    try:
        soak = Soak(base, random.Random(args.seed))
        # keep-alive shorter than the server's 5 s: never reuse a connection it may be closing
        limits = httpx.Limits(max_connections=args.max_inflight + 8, keepalive_expiry=4.0)
        async with httpx.AsyncClient(base_url=base, headers=soak.h, timeout=30, limits=limits) as c:
            for _ in range(200):
                try:
                    if (await c.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            # 1. capacity probe, closed loop
            t0 = time.perf_counter()

            async def worker(until: float) -> None:
                while time.perf_counter() < until:
                    await soak.one(c, t0)

            await asyncio.gather(*(worker(t0 + args.probe_s) for _ in range(args.workers)))
            capacity = soak.count / (time.perf_counter() - t0)
            probe_errors = len(soak.errors)
            soak.lat.clear()
            soak.count = 0
            # 2. soak, open loop at `load` of capacity
            rate = capacity * args.load
            duration = args.minutes * 60
            samples: list[tuple[float, int]] = []
            inflight: set[asyncio.Task[None]] = set()
            dropped = 0
            t_start = time.perf_counter()
            next_sample = 0.0
            next_arrival = t_start
            while (now := time.perf_counter()) < t_start + duration:
                if now - t_start >= next_sample:
                    samples.append((now - t_start, rss_kib(proc.pid)))
                    next_sample += 5.0
                if now >= next_arrival:
                    if len(inflight) < args.max_inflight:
                        task = asyncio.create_task(soak.one(c, t_start))
                        inflight.add(task)
                        task.add_done_callback(inflight.discard)
                    else:
                        dropped += 1  # the load generator is saturated, not the server
                    next_arrival += soak.rnd.expovariate(rate)
                await asyncio.sleep(min(0.01, max(0.0, next_arrival - time.perf_counter())))
            await asyncio.gather(*inflight)
            samples.append((time.perf_counter() - t_start, rss_kib(proc.pid)))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    warm = [kib for t, kib in samples if t >= min(60.0, duration / 3)] or [samples[-1][1]]
    third = duration / 3
    ops: dict[str, Any] = {}
    for name, xs in sorted(soak.lat.items()):
        first = [s for t, s in xs if t < third]
        last = [s for t, s in xs if t >= 2 * third]
        ops[name] = {
            "n": len(xs),
            "p50_ms": pct([s for _, s in xs], 0.5),
            "p95_ms": pct([s for _, s in xs], 0.95),
            "p99_ms": pct([s for _, s in xs], 0.99),
            "p50_first_third_ms": pct(first, 0.5),
            "p50_last_third_ms": pct(last, 0.5),
            "p95_first_third_ms": pct(first, 0.95),
            "p95_last_third_ms": pct(last, 0.95),
        }
    return {
        "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "minutes": args.minutes,
        "capacity_ops_s": round(capacity, 1),
        "offered_ops_s": round(rate, 1),
        "completed_ops": soak.count,
        "achieved_ops_s": round(soak.count / duration, 1),
        "generator_dropped": dropped,
        "probe_errors": probe_errors,
        "errors": len(soak.errors),
        "error_samples": soak.errors[:10],
        "rss_kib_start": warm[0],
        "rss_kib_end": warm[-1],
        "rss_kib_max": max(kib for _, kib in samples),
        "rss_growth_pct": round(100 * (warm[-1] - warm[0]) / warm[0], 2),
        "rss_samples": samples,
        "ops": ops,
        "cpus": os.cpu_count(),
    }


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"soak {r['when']}: {r['minutes']} min, capacity {r['capacity_ops_s']} ops/s, offered "
        f"{r['offered_ops_s']} ops/s, completed {r['completed_ops']} ops, errors {r['errors']}",
        f"RSS after warm-up {r['rss_kib_start'] / 1024:.1f} MiB -> {r['rss_kib_end'] / 1024:.1f} MiB "
        f"({r['rss_growth_pct']:+.2f} %), max {r['rss_kib_max'] / 1024:.1f} MiB",
        "",
        "| op | n | p50 ms | p95 ms | p99 ms | p50 first→last third | p95 first→last third |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, o in r["ops"].items():
        lines.append(
            f"| {name} | {o['n']} | {o['p50_ms']:.1f} | {o['p95_ms']:.1f} | {o['p99_ms']:.1f} | "
            f"{o['p50_first_third_ms']:.1f} → {o['p50_last_third_ms']:.1f} | "
            f"{o['p95_first_third_ms']:.1f} → {o['p95_last_third_ms']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--probe-s", type=float, default=20.0)
    p.add_argument("--workers", type=int, default=16, help="closed-loop clients in the probe")
    p.add_argument("--load", type=float, default=0.8, help="fraction of the probed capacity")
    p.add_argument("--max-inflight", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    result = asyncio.run(main_async(args))
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"soak-{result['when'].replace(':', '')}.json"
    path.write_text(json.dumps(result, indent=1))
    print(markdown(result))
    print(f"\n{path}")
    sys.exit(1 if result["errors"] else 0)


if __name__ == "__main__":
    main()
