"""`python -m bench.workers`: rnnserve against its worker count, side by side in one run.

For each `RNNSERVE_WORKERS` value (0 = one process; N = one engine process + N API workers) on the
bench models: start-up time and idle PSS of the whole process tree; session-step and
classification req/s (wrk, 32 connections, the `python -m bench` requests); 256 concurrent SSE
streams' tokens/s and ITL, 64 streams' ITL p99, and one stream's TTFT and ITL. PyTriton (binary
tensors, its own venv) runs step and classify in the same run as the reference, and the bare
onnxruntime decode step at batch 256 (`bench.inproc overhead`, the server's thread setting) gives
the tokens/s ceiling the 256-stream figure is compared with.

    python -m bench.workers                       # 0,1,2,3,4 workers, ~12 min on 2 cores
    python -m bench.workers --workers 0,2 --seconds 4 --no-peer

Writes bench/results/workers-<UTC>.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import loadgen, model, targets, workloads
from bench.__main__ import imdb_texts, machine
from bench.genclient import run as gen_run
from bench.procs import Server, cpu_by_name

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / ".out"
RESULTS = REPO / "bench" / "results"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def rnnserve(m: targets.Models, workers: int) -> Server:
    return targets.rnnserve(m, f"rnnserve-w{workers}", workers=str(workers))


def wrk(srv: Server, prefix: Path, seconds: float, warm: float) -> dict[str, Any]:
    loadgen.run_wrk(srv.base, prefix, 32, warm)
    cpu0, by0, t0 = srv.cpu(), cpu_by_name(srv.pids()), time.perf_counter()
    res = loadgen.run_wrk(srv.base, prefix, 32, seconds).as_dict()
    res["server_cpu"] = (srv.cpu() - cpu0) / (time.perf_counter() - t0)
    res["cpu_by_process"] = cores_since(srv, by0, t0)
    return res


def cores_since(srv: Server, by0: dict[str, float], t0: float) -> dict[str, float]:
    """Cores each process role used since `by0` was read at `t0` (the engine, the workers
    together, the supervisor and its fork server)."""
    wall, by1 = time.perf_counter() - t0, cpu_by_name(srv.pids())
    return {k: round((v - by0.get(k, 0.0)) / wall, 3) for k, v in by1.items()}


def streams(srv: Server, m: targets.Models, n: int, seconds: float, warm: float) -> dict[str, Any]:
    body = {"prompt": "ROMEO:", "max_tokens": 200, "stream": True, "temperature": 1.0}
    port = int(srv.base.rsplit(":", 1)[1])
    srv.wait_idle()
    by0, t0 = cpu_by_name(srv.pids()), time.perf_counter()
    r = gen_run(
        "127.0.0.1",
        port,
        f"/v1/models/{m.char_name}/generate",
        body,
        n,
        warm,
        seconds,
        str(OUT / f"gen-{srv.name}-{n}"),
    )
    r["cpu_by_process"] = cores_since(srv, by0, t0)  # over the whole run, warm-up included
    return r


def measure(
    srv: Server, m: targets.Models, texts: list[str], seconds: float, warm: float, kind: str
) -> dict[str, Any]:
    from bench.workloads import sample_state, step_requests

    out: dict[str, Any] = {}
    h, c = sample_state(m)
    prefix = OUT / "reqs" / f"w-step-{srv.name}"
    loadgen.write_requests(prefix, step_requests(kind, srv.base, m, h, c, 2, 32))
    out["step"] = wrk(srv, prefix, seconds, warm)
    prefix = OUT / "reqs" / f"w-classify-{srv.name}"
    loadgen.write_requests(prefix, workloads.classify_requests(kind, m, texts, 2))
    out["classify"] = wrk(srv, prefix, seconds, warm)
    log(
        f"{srv.name}: step {out['step']['rps']:.0f} req/s (p99 {out['step']['p99_ms']:.1f} ms, "
        f"server CPU {out['step']['server_cpu']:.2f}), classify {out['classify']['rps']:.0f} "
        f"req/s (server CPU {out['classify']['server_cpu']:.2f})"
    )
    return out


def bare_step(m: targets.Models, seconds: float) -> dict[str, Any]:
    """The bare onnxruntime (B, 1) decode step at the server's thread setting, in a fresh
    process (`bench.inproc overhead`)."""
    out = OUT / "workers-overhead.json"
    subprocess.run(
        [sys.executable, "-m", "bench.inproc", "overhead", str(m.char_dir), str(out), str(seconds)],
        cwd=REPO,
        check=True,
    )
    rows = json.loads(out.read_text())["rows"]
    return {str(r["batch"]): r for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", default="0,1,2,3,4")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--no-peer", action="store_true", help="skip PyTriton")
    a = ap.parse_args()
    warm = 2.0
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "logs").mkdir(exist_ok=True)
    mdir = model.models_dir()
    m = targets.Models(
        mdir, mdir / model.CHAR, mdir / "classifier", model.CHAR, model.classifier_name()
    )
    texts = imdb_texts()
    res: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_before": os.getloadavg(),
        "text_chars": statistics.mean(len(t) for t in texts),
        "rnnserve": {},
    }
    log(f"machine {res['machine']}; load {res['load_before']}")
    res["bare_step"] = bare_step(m, 3.0)
    b256 = res["bare_step"]["256"]["bare_ms"]
    log(f"bare onnxruntime step at batch 256: {b256:.2f} ms = {256 / b256 * 1e3:.0f} tok/s")
    if not a.no_peer:
        from bench import venvs

        venvs.ensure("pytriton", OUT / "install-pytriton.log")
        peer = targets.SERVERS["pytriton"](m)
        peer.start(timeout=180)
        try:
            res["pytriton-bin"] = measure(peer, m, texts, a.seconds, warm, "pytriton-bin")
        finally:
            peer.stop()
    for w in [int(x) for x in a.workers.split(",")]:
        srv = rnnserve(m, w)
        log(f"start {srv.name}")
        srv.start(timeout=120)
        try:
            time.sleep(2.0)
            row: dict[str, Any] = {
                "startup_s": srv.startup_s,
                "idle_pss_mb": srv.pss() / 2**20,
                "processes": len(srv.pids()),
            }
            row |= measure(srv, m, texts, a.seconds, warm, "rnnserve")
            for n in (1, 64, 256):
                row[f"gen{n}"] = streams(srv, m, n, max(a.seconds, 6.0), warm)
            g = row["gen256"]
            log(
                f"{srv.name}: start {row['startup_s']:.2f} s, idle PSS {row['idle_pss_mb']:.0f} MB "
                f"({row['processes']} procs); 256 streams {g['tokens_per_s']:.0f} tok/s "
                f"({g['tokens_per_s'] / (256 / b256 * 1e3):.0%} of bare), ITL p99 64 streams "
                f"{row['gen64']['itl_p99_ms']:.2f} ms; 1 stream TTFT p50 "
                f"{row['gen1']['ttft_p50_ms']:.1f} ms ITL p50 {row['gen1']['itl_p50_ms']:.2f} ms"
            )
            res["rnnserve"][str(w)] = row
        finally:
            srv.stop()
    res["load_after"] = os.getloadavg()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"workers-{stamp}.json").write_text(json.dumps(res, indent=1))
    md = table(res)
    (RESULTS / f"workers-{stamp}.md").write_text(md)
    print(md)


def table(res: dict[str, Any]) -> str:
    b256 = res["bare_step"]["256"]["bare_ms"]
    ceiling = 256 / b256 * 1e3
    peer = res.get("pytriton-bin")
    lines = [
        f"machine: {res['machine']}; load before {res['load_before']}",
        f"bare onnxruntime decode step at batch 256: {b256:.2f} ms = {ceiling:,.0f} tok/s",
    ]
    if peer:
        lines.append(
            f"PyTriton (binary): step {peer['step']['rps']:,.0f} req/s, classify "
            f"{peer['classify']['rps']:,.0f} req/s"
        )
    lines += [
        "",
        "| workers | processes | start s | idle PSS MB | step req/s | × PyTriton | classify req/s "
        "| × PyTriton | 256 streams tok/s | % of bare | ITL p99 64 streams ms | 1 stream TTFT / ITL "
        "p50 ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for w, r in res["rnnserve"].items():
        ps = f"{r['step']['rps'] / peer['step']['rps']:.2f}" if peer else "–"
        pc = f"{r['classify']['rps'] / peer['classify']['rps']:.2f}" if peer else "–"
        g = r["gen256"]
        lines.append(
            f"| {w} | {r['processes']} | {r['startup_s']:.2f} | {r['idle_pss_mb']:.0f} | "
            f"{r['step']['rps']:,.0f} | {ps} | {r['classify']['rps']:,.0f} | {pc} | "
            f"{g['tokens_per_s']:,.0f} | {g['tokens_per_s'] / ceiling:.0%} | "
            f"{r['gen64']['itl_p99_ms']:.2f} | {r['gen1']['ttft_p50_ms']:.1f} / "
            f"{r['gen1']['itl_p50_ms']:.2f} |"
        )
    lines += [
        "",
        "Server cores by process (kernel name; `python` = the supervisor and its fork server, or "
        "the one process at 0 workers):",
        "",
        "| workers | step: engine / workers / other | classify | 256 streams |",
        "|---:|---|---|---|",
    ]
    for w, r in res["rnnserve"].items():
        cells = [_split(r[k].get("cpu_by_process", {})) for k in ("step", "classify", "gen256")]
        lines.append(f"| {w} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _split(by: dict[str, float]) -> str:
    if not by:
        return "–"
    eng = by.get("rnnserve-engine", 0.0)
    wrk = by.get("rnnserve-worker", 0.0)
    rest = sum(by.values()) - eng - wrk
    return f"{eng:.2f} / {wrk:.2f} / {rest:.2f}"


if __name__ == "__main__":
    main()
