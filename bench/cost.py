"""`python -m bench.cost`: the server's own CPU, by process role, per session step and per streamed
token, measured with a near-free model.

`tests/fixtures/models/tiny-char-lstm` is a few KB: its onnxruntime step costs almost nothing,
as the shipped models' steps will at large batch on a GPU. What a request or a token then costs
is the server itself: HTTP, the wire, the engine's Python. This is the figure that decides how
much of a GPU one engine process can feed (issue 27). CPU is read from /proc per process and
summed by kernel name (`rnnserve-engine`, `rnnserve-worker`; `python` at `--workers 0`) over
exactly the window whose requests or tokens are counted.

    python -m bench.cost                            # this tree: --workers 1, streams 256,1024,4096
    python -m bench.cost --base e26786e --rounds 3  # and a baseline ref, in interleaved rounds
    python -m bench.cost --workers 0 --streams 256 --seconds 4

Writes bench/.out/cost-<UTC>.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench import loadgen
from bench.ab import server, worktree
from bench.genclient import run as gen_run
from bench.procs import Server, cpu_by_name, pss_by_name

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / ".out"
MODELS = REPO / "tests" / "fixtures" / "models"
LM = "tiny-char-lstm"
CONNECTIONS = 32  # session-step clients (one session each, one character per feed)
ROLES = {
    "rnnserve-engine": "engine",
    "rnnserve-worker": "workers",
    "python": "python (the one process, or the supervisor)",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _roles(by_name: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, cpu in by_name.items():
        role = ROLES.get(name, "other")  # the supervisor and its fork server: idle
        out[role] = out.get(role, 0.0) + cpu
    return out


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def step(srv: Server, seconds: float) -> dict[str, Any]:
    """Session steps at `CONNECTIONS` clients: req/s and CPU µs per request by role."""
    paths = []
    with httpx.Client(base_url=srv.base, timeout=30) as c:
        for _ in range(CONNECTIONS):
            sid = c.post("/v1/sessions", json={"model": LM}).json()["session_id"]
            c.post(f"/v1/sessions/{sid}/feed", json={"text": "To be, or not"})
            paths.append(f"/v1/sessions/{sid}/feed")
    body = json.dumps({"text": "a"}).encode()
    headers = {"Content-Type": "application/json"}
    threads = 2
    per = [
        [loadgen.Req("POST", p, headers, body) for p in paths[i::threads]] for i in range(threads)
    ]
    prefix = OUT / "reqs" / f"cost-step-{srv.name}"
    loadgen.write_requests(prefix, per)
    loadgen.run_wrk(srv.base, prefix, CONNECTIONS, 1.0)  # warm-up
    before = _roles(cpu_by_name(srv.pids()))
    res = loadgen.run_wrk(srv.base, prefix, CONNECTIONS, seconds)
    used = _delta(before, _roles(cpu_by_name(srv.pids())))
    n = max(1, res.requests)
    return {
        "rps": res.rps,
        "p99_ms": res.as_dict()["p99_ms"],
        "us_per_request": {k: round(v / n * 1e6, 2) for k, v in used.items() if v > 0},
    }


def streams(srv: Server, n: int, seconds: float, warm: float) -> dict[str, Any]:
    """`n` concurrent SSE streams: tokens/s, ITL and CPU µs per token by role, the CPU read at
    the start and the end of the window whose tokens genclient counts."""
    srv.wait_idle()
    idle = _roles(pss_by_name(srv.pids()))  # memory with no stream open, by role
    port = int(srv.base.rsplit(":", 1)[1])
    body = {"prompt": "ROMEO:", "max_tokens": 200, "stream": True, "temperature": 1.0}
    t0 = time.perf_counter() + 0.3  # genclient's own start (perf_counter is system-wide)
    marks: list[dict[str, float]] = []
    loaded: dict[str, float] = {}

    def sample() -> None:
        for at in (t0 + warm, t0 + warm + seconds):
            time.sleep(max(0.0, at - time.perf_counter()))
            marks.append(_roles(cpu_by_name(srv.pids())))
            if not loaded:  # every stream open (after the warm-up): memory by role
                loaded.update(_roles(pss_by_name(srv.pids())))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    r = gen_run(
        "127.0.0.1",
        port,
        f"/v1/models/{LM}/generate",
        body,
        n,
        warm,
        seconds,
        str(OUT / f"cost-gen-{srv.name}-{n}"),
    )
    sampler.join()
    used = _delta(marks[0], marks[1])
    tokens = max(1, r["tokens"])
    return {
        "streams": n,
        "tokens_per_s": r["tokens_per_s"],
        "errors": r["errors"],
        "itl_p99_ms": r["itl_p99_ms"],
        "us_per_token": {k: round(v / tokens * 1e6, 3) for k, v in used.items() if v > 0},
        # what n open streams add to each role's memory, per stream (PSS, KiB)
        "kib_per_stream": {
            k: round((v - idle.get(k, 0.0)) / n / 1024, 2) for k, v in loaded.items()
        },
        "pss_mib": {k: round(v / 2**20, 1) for k, v in loaded.items()},
    }


def measure(srv: Server, counts: list[int], seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {"step": step(srv, seconds)}
    s = out["step"]
    log(f"{srv.name}: step {s['rps']:.0f} req/s, CPU us/request {s['us_per_request']}")
    for n in counts:
        g = streams(srv, n, seconds, warm=2.0)
        out[f"streams-{n}"] = g
        log(
            f"{srv.name}: {n} streams {g['tokens_per_s']:.0f} tok/s "
            f"(errors {g['errors']}), CPU us/token {g['us_per_token']}"
        )
    return out


def _median(rounds: list[dict[str, Any]], key: str, field: str, role: str) -> float | None:
    vals = [r[key][field].get(role) for r in rounds if r[key][field].get(role) is not None]
    return statistics.median(vals) if vals else None


def table(results: dict[str, list[dict[str, Any]]], counts: list[int]) -> str:
    names = list(results)
    rows = ["| workload | role | " + " | ".join(names) + (" | B/A |" if len(names) == 2 else " |")]
    rows.append("|---" * (2 + len(names) + (len(names) == 2)) + "|")
    for key, field, unit in [("step", "us_per_request", "µs CPU / step")] + [
        (f"streams-{n}", "us_per_token", "µs CPU / token") for n in counts
    ]:
        roles = sorted({r for v in results.values() for x in v for r in x[key][field]})
        for role in roles:
            vals = [_median(results[n], key, field, role) for n in names]
            cells = ["-" if v is None else f"{v:.2f}" for v in vals]
            ratio = (
                f" {vals[1] / vals[0]:.2f} |"
                if len(vals) == 2 and vals[0] and vals[1] is not None
                else (" - |" if len(names) == 2 else "")
            )
            rows.append(f"| {key} ({unit}) | {role} | " + " | ".join(cells) + " |" + ratio)
        rate = "rps" if key == "step" else "tokens_per_s"
        vals = [statistics.median(x[key][rate] for x in results[n]) for n in names]
        ratio = f" {vals[1] / vals[0]:.2f} |" if len(vals) == 2 and vals[0] else ""
        rows.append(
            f"| {key} | {'req/s' if key == 'step' else 'tokens/s'} | "
            + " | ".join(f"{v:.0f}" for v in vals)
            + " |"
            + ratio
        )
    return "\n".join(rows)


def env_for(workers: int, counts: list[int]) -> dict[str, str]:
    top = max([*counts, 256])
    return {
        "RNNSERVE_WORKERS": str(workers),
        "RNNSERVE_LOG_LEVEL": "warning",
        "RNNSERVE_MAX_STREAMS": str(top),  # every stream in one decode batch
        # twice the streams: a client that reconnects at once must not find its old slot
        # still held (a 503 the benchmark would count as an error)
        "RNNSERVE_MAX_OPEN_STREAMS": str(2 * top),
        # every stream's prompt may wait for its prefill at once (the default, 1,024 waiting
        # jobs a model, answered 4,096 streams opened together with some 503 `overloaded`)
        "RNNSERVE_MAX_QUEUE": str(2 * top),
        "RNNSERVE_MAX_TOKENS_LIMIT": "100000",
    }


def run_once(workers: int, counts: list[int], seconds: float, cwd: Path = REPO) -> dict[str, Any]:
    """One measurement of the tree at `cwd` (what `python -m bench --only cost` runs)."""
    # named by its tree: its own log (bench/.out/logs/ab-<name>.log) and genclient scratch files
    srv = server(f"cost-{cwd.name}-w{workers}", cwd, MODELS, env_for(workers, counts))
    srv.start()
    try:
        return measure(srv, counts, seconds)
    finally:
        srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", help="a git ref to measure beside this tree (A = base, B = tree)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--streams", default="256,1024,4096")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    counts = [int(x) for x in a.streams.split(",") if x]
    OUT.mkdir(parents=True, exist_ok=True)
    targets: list[tuple[str, Path]] = []
    if a.base:
        targets.append((f"A:{a.base}", worktree(a.base)))
    targets.append(("B:tree" if a.base else "tree", REPO))
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in targets}
    for r in range(a.rounds):
        # every other round the other order: whichever runs first would otherwise always meet
        # the machine as the previous server left it
        for name, cwd in targets if r % 2 == 0 else targets[::-1]:
            log(f"round {r + 1}/{a.rounds}: {name}")
            results[name].append(run_once(a.workers, counts, a.seconds, cwd))
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = OUT / f"cost-{stamp}.json"
    path.write_text(json.dumps({"args": vars(a), "results": results}, indent=1))
    print(table(results, counts))
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
