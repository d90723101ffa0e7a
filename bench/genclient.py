"""Streaming-generation load: N concurrent SSE streams over raw asyncio sockets, split across
processes so the client is not the bottleneck. Each stream POSTs a generation, timestamps every
`event: token` frame as it arrives, and starts the next generation when one ends.

    python -m bench.genclient HOST PORT PATH STREAMS WARMUP_S SECONDS MAX_TOKENS OUT.json [BODY]

Only tokens that arrive inside the measurement window (after the warm-up) count. Inter-token
gaps are per token as the client sees them (tokens that arrive in one read get a gap of 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from typing import Any

import numpy as np

PAT = b"event: token"


async def _stream(
    host: str, port: int, request: bytes, t_start: float, t_end: float, out: dict[str, Any]
) -> None:
    tail = len(PAT) - 1
    while time.perf_counter() < t_end:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:  # refused or reset while connecting: an error, not the end of the run
            out["errors"] += 1
            await asyncio.sleep(0.01)
            continue
        sent = time.perf_counter()
        writer.write(request)
        last: float | None = None
        prev = b""
        first = True
        checked = False
        try:
            while True:
                data = await reader.read(65536)
                now = time.perf_counter()
                if not data:
                    break
                buf = prev + data
                k = buf.count(PAT)
                prev = buf[-tail:]
                if not checked:
                    checked = True
                    if b" 200 " not in buf.split(b"\r\n", 1)[0]:
                        out["errors"] += 1
                        break
                if k == 0:
                    continue
                if now >= t_end:
                    break
                inside = now >= t_start
                if first:
                    first = False
                    if inside:
                        out["ttft"].append(now - sent)
                elif last is not None and inside:
                    out["itl"].append(now - last)
                if inside:
                    out["itl"].extend([0.0] * (k - 1))
                    out["tokens"] += k
                last = now
        except OSError:  # the server reset the connection: count it, open another
            out["errors"] += 1
            continue
        finally:
            writer.close()
        out["generations"] += 1


async def _main(
    host: str, port: int, request: bytes, streams: int, t_start: float, t_end: float
) -> dict[str, Any]:
    out: dict[str, Any] = {"tokens": 0, "ttft": [], "itl": [], "errors": 0, "generations": 0}
    await asyncio.gather(
        *(_stream(host, port, request, t_start, t_end, out) for _ in range(streams))
    )
    return out


def _worker(args: tuple[str, int, bytes, int, float, float, str]) -> None:
    host, port, request, streams, t_start, t_end, path = args
    with contextlib.suppress(OSError):
        os.nice(-5)  # timestamps must reflect the server, not the client's scheduling luck
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    out = asyncio.run(_main(host, port, request, streams, t_start, t_end))
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu_s"] = ru.ru_utime + ru.ru_stime
    np.save(path + ".itl.npy", np.asarray(out.pop("itl"), np.float32))
    np.save(path + ".ttft.npy", np.asarray(out.pop("ttft"), np.float32))
    with open(path, "w") as f:
        json.dump(out, f)


def build_request(host: str, port: int, path: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\nConnection: close\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def run(
    host: str,
    port: int,
    path: str,
    body: dict[str, Any],
    streams: int,
    warmup_s: float,
    seconds: float,
    scratch: str,
) -> dict[str, Any]:
    """Drive `streams` concurrent streams; returns tokens/s, TTFT and inter-token percentiles."""
    procs = 1 if streams < 32 else min(2, os.cpu_count() or 1)
    request = build_request(host, port, path, body)
    t0 = time.perf_counter() + 0.3  # perf_counter is system-wide (CLOCK_MONOTONIC) on Linux
    t_start, t_end = t0 + warmup_s, t0 + warmup_s + seconds
    shares = [streams // procs + (i < streams % procs) for i in range(procs)]
    paths = [f"{scratch}.{i}.json" for i in range(procs)]
    ctx = mp.get_context("fork")
    ps = [
        ctx.Process(target=_worker, args=((host, port, request, s, t_start, t_end, p),))
        for s, p in zip(shares, paths, strict=True)
    ]
    wall0 = time.perf_counter()
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    wall = time.perf_counter() - wall0
    tokens = errors = gens = 0
    cpu = 0.0
    itl, ttft = [], []
    for path_ in paths:
        with open(path_) as f:
            d = json.load(f)
        tokens += d["tokens"]
        errors += d["errors"]
        gens += d["generations"]
        cpu += d["cpu_s"]
        itl.append(np.load(path_ + ".itl.npy"))
        ttft.append(np.load(path_ + ".ttft.npy"))
    it, tt = np.concatenate(itl), np.concatenate(ttft)

    def pct(a: np.ndarray, q: float) -> float:
        return float(np.percentile(a, q) * 1e3) if a.size else float("nan")

    return {
        "streams": streams,
        "tokens_per_s": tokens / seconds,
        "tokens": tokens,
        "generations": gens,
        "errors": errors,
        "ttft_p50_ms": pct(tt, 50),
        "ttft_p99_ms": pct(tt, 99),
        "itl_p50_ms": pct(it, 50),
        "itl_p99_ms": pct(it, 99),
        "client_cpu": cpu / wall,
        "itl_sample": np.sort(it)[:: max(1, it.size // 2000)].tolist(),
    }


if __name__ == "__main__":
    a = sys.argv[1:]
    body = (
        json.loads(a[8])
        if len(a) > 8
        else {"prompt": "ROMEO:", "stream": True, "max_tokens": int(a[6])}
    )
    r = run(a[0], int(a[1]), a[2], body, int(a[3]), float(a[4]), float(a[5]), a[7])
    r.pop("itl_sample")
    print(json.dumps(r, indent=1))
