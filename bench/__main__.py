"""`python -m bench`: the whole side-by-side suite, bounded in time, loopback only.

    python -m bench                  # everything (~15 min on 2 cores)
    python -m bench --quick          # a few seconds per measurement: proves the plumbing
    python -m bench --only step,classify --peers floor,pytriton
    python -m bench --only cost      # the server's own CPU by process role (bench/cost.py)
    python -m bench --only engine    # what one engine process can feed (bench/engine_load.py)

Results: bench/.out/results-<UTC>.json (scratch) and bench/results/latest.{json,md} + PNGs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import loadgen, model, stats, targets, venvs, workloads
from bench.genclient import run as gen_run
from bench.procs import Server

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / ".out"
RESULTS = REPO / "bench" / "results"
IMDB = REPO.parent / "shared" / "datasets" / "imdb" / "train.jsonl.gz"
WORKLOADS = (
    "step",
    "classify",
    "generate",
    "footprint",
    "capacity",
    "overhead",
    "cost",
    "engine",
)
ALL_TARGETS = (
    "rnnserve",
    "floor",
    "pytriton-bin",
    "pytriton-json",
    "torchserve",
    "mlserver",
    "bentoml",
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def machine() -> dict[str, Any]:
    info = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")),
        platform.processor(),
    )
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem = next(int(ln.split()[1]) for ln in meminfo if ln.startswith("MemTotal"))
    import fastapi
    import numpy
    import onnxruntime
    import uvicorn

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_gb": round(mem / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "fastapi": fastapi.__version__,
        "uvicorn": uvicorn.__version__,
        "numpy": numpy.__version__,
        "wrk": subprocess.run(["wrk", "--version"], capture_output=True, text=True)
        .stdout.split("\n")[0]
        .strip(),
    }


def imdb_texts(n: int = 256) -> list[str]:
    out = []
    with gzip.open(IMDB, "rt", encoding="utf-8") as f:
        for line in f:
            out.append(json.loads(line)["text"])
            if len(out) >= n:
                break
    return out


# what a correct answer contains (one of)
EXPECT = {"step": (b'"next"', b'"logits"', b'"h"'), "classify": (b'"probs"', b'"label"')}


def wrk_workload(
    name: str,
    servers: dict[str, Server],
    reqs: dict[str, Path],
    conns: int,
    rounds: int,
    seconds: float,
    warm: float,
) -> dict[str, Any]:
    """Interleaved rounds (every target once per round) so drift hits all targets alike."""
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in reqs}
    for t, prefix in list(reqs.items()):
        status, body = loadgen.probe(
            servers[targets.TARGETS[t]].base, loadgen.read_requests(Path(f"{prefix}.0"))[0]
        )
        ok = status == 200 and any(k in body for k in EXPECT[name])
        log(f"{name} probe {t}: {status} {body[:100]!r}{'' if ok else '  <- WRONG, skipped'}")
        if not ok:
            del reqs[t]
            runs.pop(t)
    for r in range(rounds):
        for t, prefix in reqs.items():
            srv = servers[targets.TARGETS[t]]
            loadgen.run_wrk(srv.base, prefix, conns, warm)
            cpu0, t0 = srv.cpu(), time.perf_counter()
            res = loadgen.run_wrk(srv.base, prefix, conns, seconds).as_dict()
            res["server_cpu"] = (srv.cpu() - cpu0) / (time.perf_counter() - t0)
            runs[t].append(res)
            log(
                f"{name} round {r + 1} {t}: {res['rps']:.0f} req/s p50 {res['p50_ms']:.2f} ms "
                f"p99 {res['p99_ms']:.2f} ms errors {res['errors']} client CPU "
                f"{res['client_cpu']:.2f} server CPU {res['server_cpu']:.2f}"
            )
    summary = stats.summarize(runs)
    return {"connections": conns, "rounds": rounds, "seconds": seconds, "targets": summary}


def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: ~2 s per measurement")
    ap.add_argument("--only", default=",".join(WORKLOADS), help="workloads, comma-separated")
    ap.add_argument("--peers", default=",".join(ALL_TARGETS), help="targets, comma-separated")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--streams", default="1,16,64,256")
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument(
        "--no-save", action="store_true", help="do not update bench/results/ (a full run does)"
    )
    a = ap.parse_args()
    only = set(a.only.split(","))
    want = [t for t in a.peers.split(",") if t]
    if a.quick:
        a.rounds, a.seconds = 1, 2.0
        a.sessions = min(a.sessions, 5000)
    warm = 1.0 if a.quick else 2.0
    t_begin = time.time()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "logs").mkdir(exist_ok=True)
    res: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "machine": machine(),
        "load_before": os.getloadavg(),
        "peer_versions": {},
    }
    log(f"machine: {res['machine']}; load {res['load_before']}")

    mdir = model.models_dir()
    mods = targets.Models(
        mdir, mdir / model.CHAR, mdir / "classifier", model.CHAR, model.classifier_name()
    )
    res["models"] = {
        "char": mods.char_name,
        "classifier": mods.cls_name,
        "classifier_source": str(model.classifier_source().relative_to(REPO)),
    }
    needed = {targets.TARGETS[t] for t in want}
    if only & {"step", "classify", "footprint"}:
        for peer in sorted(needed & set(targets.PEER_VENV)):
            t0 = time.time()
            log(f"venv {peer}: installing/checking")
            venvs.ensure(peer, OUT / f"install-{peer}.log")
            res["peer_versions"][peer] = venvs.versions(peer)
            log(f"venv {peer}: ready in {time.time() - t0:.0f}s {res['peer_versions'][peer]}")
    else:
        needed &= {"rnnserve", "floor"}

    servers: dict[str, Server] = {}
    foot: dict[str, Any] = {}
    try:
        if only & {"step", "classify", "footprint"}:
            for name in [
                s
                for s in ("rnnserve", "floor", "pytriton", "torchserve", "mlserver", "bentoml")
                if s in needed
            ]:
                srv = targets.SERVERS[name](mods)
                log(f"start {name}")
                try:
                    srv.start(timeout=180)
                except RuntimeError as e:
                    log(f"FAILED to start {name}: {e}")
                    foot[name] = {"error": str(e)}
                    continue
                time.sleep(2.0)
                foot[name] = {
                    "startup_s": srv.startup_s,
                    "idle_pss_mb": srv.pss() / 2**20,
                    "processes": len(srv.pids()),
                }
                servers[name] = srv
                log(
                    f"{name}: ready in {srv.startup_s:.2f}s, idle PSS "
                    f"{foot[name]['idle_pss_mb']:.0f} MB in {foot[name]['processes']} processes"
                )
            live = [t for t in want if targets.TARGETS[t] in servers]
            if "step" in only:
                from bench.workloads import sample_state, step_requests

                h, c = sample_state(mods)
                reqs = {}
                for t in live:
                    prefix = OUT / "reqs" / f"step-{t}"
                    srv = servers[targets.TARGETS[t]]
                    loadgen.write_requests(prefix, step_requests(t, srv.base, mods, h, c, 2, 32))
                    reqs[t] = prefix
                res["step"] = wrk_workload("step", servers, reqs, 32, a.rounds, a.seconds, warm)
            if "classify" in only:
                texts = imdb_texts()
                res["classify_text_chars"] = statistics.mean(len(t) for t in texts)
                reqs = {}
                for t in live:
                    prefix = OUT / "reqs" / f"classify-{t}"
                    loadgen.write_requests(prefix, workloads.classify_requests(t, mods, texts, 2))
                    reqs[t] = prefix
                res["classify"] = wrk_workload(
                    "classify", servers, reqs, 32, a.rounds, a.seconds, warm
                )
            for name, srv in servers.items():
                foot[name]["loaded_pss_mb"] = srv.pss() / 2**20
            for name in [n for n in servers if n not in ("rnnserve", "floor")]:
                servers.pop(name).stop()
            for name in foot:
                venv = name if name in targets.PEER_VENV else None
                if name == "rnnserve":
                    try:  # its own serving-only install, measured like the peers' venvs
                        venvs.ensure("rnnserve", OUT / "install-rnnserve.log")
                        venv = "rnnserve"
                    except Exception as e:
                        log(f"serving-only venv for rnnserve failed: {e}")
                if venv is not None:
                    foot[name]["install_mb"] = venvs.size_mb(venv)
            res["footprint"] = foot
            (OUT / "results-partial.json").write_text(json.dumps(res, indent=1))

        if "generate" in only:
            for name in ("rnnserve", "floor"):
                if name not in servers and name in needed:
                    servers[name] = targets.SERVERS[name](mods)
                    servers[name].start()
            gen: dict[str, Any] = {}
            body = {"prompt": "ROMEO:", "max_tokens": 200, "stream": True, "temperature": 1.0}
            paths = {"rnnserve": f"/v1/models/{mods.char_name}/generate", "floor": "/generate"}
            secs = a.seconds if a.quick else 10.0
            for name in [x for x in ("rnnserve", "floor") if x in servers]:
                port = int(servers[name].base.rsplit(":", 1)[1])  # warm-up, discarded
                gen_run(
                    "127.0.0.1",
                    port,
                    paths[name],
                    body,
                    64,
                    0.5,
                    warm,
                    str(OUT / f"gen-{name}-warm"),
                )
            for n in [int(x) for x in a.streams.split(",")]:
                for name in [x for x in ("rnnserve", "floor") if x in servers]:
                    srv = servers[name]
                    port = int(srv.base.rsplit(":", 1)[1])
                    for other in servers.values():
                        other.wait_idle()
                    cpu0, t0 = srv.cpu(), time.perf_counter()
                    r = gen_run(
                        "127.0.0.1",
                        port,
                        paths[name],
                        body,
                        n,
                        warm,
                        secs,
                        str(OUT / f"gen-{name}-{n}"),
                    )
                    r["server_cpu"] = (srv.cpu() - cpu0) / (time.perf_counter() - t0)
                    gen.setdefault(name, {})[str(n)] = r
                    log(
                        f"generate {name} {n} streams: {r['tokens_per_s']:.0f} tok/s, TTFT p50 "
                        f"{r['ttft_p50_ms']:.1f} ms, ITL p50 {r['itl_p50_ms']:.2f} p99 "
                        f"{r['itl_p99_ms']:.2f} ms, errors {r['errors']}, client CPU "
                        f"{r['client_cpu']:.2f}"
                    )
            res["generate"] = gen
    finally:
        for srv in servers.values():
            srv.stop()

    py = sys.executable
    if "overhead" in only:
        log("engine overhead (in-process)")
        path = OUT / "overhead.json"
        subprocess.run(
            [
                py,
                "-m",
                "bench.inproc",
                "overhead",
                str(mods.char_dir),
                str(path),
                "1" if a.quick else "2",
            ],
            check=True,
            cwd=REPO,
            capture_output=True,
        )
        res["overhead"] = json.loads(path.read_text())
        for row in res["overhead"]["rows"]:
            log(
                f"overhead batch {row['batch']}: bare {row['bare_ms']:.3f} ms, engine "
                f"{row['engine_ms']:.3f} ms, x{row['ratio']:.2f}"
            )
    if "capacity" in only:
        log(f"session capacity ({a.sessions} sessions, in-process)")
        path = OUT / "capacity.json"
        subprocess.run(
            [
                py,
                "-m",
                "bench.inproc",
                "capacity",
                str(mods.root),
                mods.char_name,
                str(a.sessions),
                str(path),
            ],
            check=True,
            cwd=REPO,
            capture_output=True,
        )
        res["capacity"] = json.loads(path.read_text())
        c = res["capacity"]
        log(
            f"capacity: {c['bytes_per_session']:.0f} B/session vs raw state "
            f"{c['raw_state_bytes']} B (x{c['ratio']:.2f})"
        )

    if "cost" in only:
        # the server's own CPU per step and per token by process role (bench/cost.py)
        from bench import cost

        log("the server's own cost: near-free model, --workers 1")
        counts = [256] if a.quick else [256, 1024, 4096]
        res["cost"] = cost.run_once(1, counts, 2.0 if a.quick else 6.0)

    if "engine" in only:
        # one engine process loaded over the wire, without API workers (bench/engine_load.py)
        from bench import engine_load

        log("what one engine process can feed: near-free model, loaded over the wire")
        counts = [256] if a.quick else [256, 1024, 4096]
        res["engine"] = engine_load.run_once(engine_load.REPO, counts, 2.0 if a.quick else 6.0)
        for k, v in res["engine"].items():
            log(f"  {k}: {v['rate']:.0f}/s, engine {v['us_per_unit']} us CPU each")

    res["load_after"] = os.getloadavg()
    res["wall_s"] = time.time() - t_begin
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    (OUT / f"results-{stamp}.json").write_text(json.dumps(res, indent=1))
    log(f"done in {res['wall_s']:.0f}s -> bench/.out/results-{stamp}.json")
    # only a full run replaces the committed results: a partial one would drop the tables of
    # the workloads and peers it left out
    full = only == set(WORKLOADS) and set(want) == set(ALL_TARGETS)
    if not a.no_save and not a.quick and full:
        from bench import report

        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "latest.json").write_text(json.dumps(res, indent=1))
        report.write(res, RESULTS)
        log("bench/results/latest.{json,md} and plots written")


if __name__ == "__main__":
    main()
