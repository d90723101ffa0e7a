"""`python -m bench.reload`: what a model load and unload cost the requests being served meanwhile.

A real server (`rnnserve serve`, `--workers` as given) serves the fixture `tiny-char-lstm` and the
shipped `sentiment-lstm-large` (17 MB graph, the biggest shipped). Clients feed sessions of the
first in a closed loop the whole time, while the second is unloaded and loaded again, cycle after
cycle. Each feed's latency is filed under "quiet" or "during a load / unload" by when it ran;
the report gives both side by side (p50, p99, max), each load's and unload's duration, and the
server's PSS (all its processes) loaded and unloaded. Loading builds the onnxruntime session in a thread, so
serving goes on; what it still costs the loop (GIL hand-offs) shows here.

    python -m bench.reload [--workers 0] [--clients 16] [--cycles 5]

Writes bench/.out/reload-<UTC>.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.procs import Server, free_port

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / ".out"
LM, BIG = "tiny-char-lstm", "sentiment-lstm-large"


def _pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


async def _feeder(c: httpx.AsyncClient, stop_at: float, out: list[tuple[float, float]]) -> None:
    sid = (await c.post("/v1/sessions", json={"model": LM})).json()["session_id"]
    while time.monotonic() < stop_at:
        t0 = time.monotonic()
        r = await c.post(f"/v1/sessions/{sid}/feed", json={"text": "to be "})
        r.raise_for_status()
        out.append((t0, time.monotonic() - t0))


async def _measure(
    base: str, big: str, clients: int, cycles: int, quiet_s: float
) -> dict[str, Any]:
    feeds: list[tuple[float, float]] = []
    busy: list[tuple[float, float]] = []  # (start, end) of each load and unload
    loads, unloads = [], []
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as c:
        stop_at = time.monotonic() + quiet_s * (2 * cycles + 1) + 30
        tasks = [asyncio.create_task(_feeder(c, stop_at, feeds)) for _ in range(clients)]
        await asyncio.sleep(quiet_s)
        for _ in range(cycles):
            for path, durations in (("unload", unloads), ("load", loads)):
                t0 = time.monotonic()
                body = {"drain_s": 0} if path == "unload" else {}
                r = await c.post(f"/v1/repository/models/{big}/{path}", json=body)
                r.raise_for_status()
                if path == "unload":  # it went once the index says so
                    while any(
                        e["name"] == big and e["state"] != "UNAVAILABLE"
                        for e in (await c.get("/v1/repository")).json()["models"]
                    ):
                        await asyncio.sleep(0.005)
                t1 = time.monotonic()
                busy.append((t0, t1))
                durations.append(t1 - t0)
                await asyncio.sleep(quiet_s)
        for t in tasks:
            t.cancel()
        for out in await asyncio.gather(*tasks, return_exceptions=True):
            if not isinstance(out, asyncio.CancelledError | None):
                raise out  # a feed failed: the load or unload broke serving
    during = [lat for t0, lat in feeds if any(a <= t0 <= b for a, b in busy)]
    quiet = [lat for t0, lat in feeds if not any(a - 0.2 <= t0 <= b + 0.2 for a, b in busy)]
    return {
        "quiet": _summary(quiet),
        "during": _summary(during),
        "load_s": loads,
        "unload_s": unloads,
    }


def _summary(lat: list[float]) -> dict[str, float]:
    return {
        "feeds": len(lat),
        "p50_ms": 1000 * statistics.median(lat) if lat else float("nan"),
        "p99_ms": 1000 * _pct(lat, 0.99),
        "max_ms": 1000 * max(lat, default=float("nan")),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--cycles", type=int, default=5)
    ap.add_argument("--quiet-s", type=float, default=1.5, help="between loads and unloads")
    ap.add_argument("--big", type=Path, default=REPO / "models" / BIG, help="model loaded")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    big = args.big.name
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        shutil.copytree(REPO / "tests" / "fixtures" / "models" / LM, models / LM)
        shutil.copytree(args.big, models / big)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = Server(
            "rnnserve",
            [sys.executable, "-c", "from service.server import serve; serve()"],
            f"{base}/readyz",
            base,
            env={
                "RNNSERVE_MODELS_DIR": str(models),
                "RNNSERVE_PORT": str(port),
                "RNNSERVE_WORKERS": str(args.workers),
                "RNNSERVE_LOG_LEVEL": "warning",
            },
            cwd=REPO,
        )
        server.start()
        try:
            time.sleep(2)  # (the workers answer readiness one by one)
            loaded = server.pss() / 2**20
            result = asyncio.run(_measure(base, big, args.clients, args.cycles, args.quiet_s))
            with httpx.Client(base_url=base) as c:
                c.post(f"/v1/repository/models/{big}/unload", json={"drain_s": 0})
                while any(
                    e["name"] == big and e["state"] != "UNAVAILABLE"
                    for e in c.get("/v1/repository").json()["models"]
                ):
                    time.sleep(0.01)
            unloaded = server.pss() / 2**20
        finally:
            server.stop()
    result |= {
        "model": big,
        "workers": args.workers,
        "clients": args.clients,
        "pss_mib_loaded": loaded,
        "pss_mib_unloaded": unloaded,
    }
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or OUT / f"reload-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    q, d = result["quiet"], result["during"]
    print(
        f"| feeds ({args.clients} clients, --workers {args.workers}) | n | p50 ms | p99 ms | max ms |"
    )
    print("|---|---|---|---|---|")
    for name, st in (("quiet", q), (f"during a load or unload of {big}", d)):
        print(
            f"| {name} | {st['feeds']} | {st['p50_ms']:.2f} | {st['p99_ms']:.2f} "
            f"| {st['max_ms']:.1f} |"
        )
    print(
        f"\nload {statistics.median(result['load_s']):.2f} s, unload "
        f"{statistics.median(result['unload_s']):.2f} s (medians of {len(result['load_s'])}); "
        f"PSS {loaded:.0f} MiB loaded -> {unloaded:.0f} MiB unloaded; {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
