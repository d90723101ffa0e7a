"""A/B of rnnserve against itself: this working tree vs a baseline git ref, side by side.

    python -m bench.ab --base 7f9c071              # generation 1/16/64/256, step, classify
    python -m bench.ab --base HEAD~1 --only generate --streams 64,256 --rounds 5
    python -m bench.ab --base main --env-b RNNSERVE_INTRA_OP_THREADS=1   # a setting, same code
    python -m bench.ab --base HEAD~1 --only session   # short session streams, one client
    python -m bench.ab --base HEAD --only step --otlp-sink \
        --env-b OTEL_TRACES_SAMPLER=traceidratio --env-b OTEL_TRACES_SAMPLER_ARG=0.1
                                   # tracing on at 10 % (B) vs off (A), exported for real
    python -m bench.ab --base HEAD~1 --only step --otlp-sink ab --env-a ... --env-b ...
                                   # both traced (the same sampler variables in each)

Both servers run at once on loopback (the baseline from a `git worktree` of `--base` under
bench/.out/, with the same venv), and every measurement goes in interleaved rounds (A, B, A,
B, ...) so the machine's drift hits both alike; the ratio B/A is taken per round and its median
reported, with the absolute medians beside it. Workloads are the suite's own (bench/genclient.py
for SSE generation, wrk for the session step and IMDB classification at 32 clients). Results: bench/.out/ab-<UTC>.json and a Markdown
table on stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import loadgen, model, targets, workloads
from bench.genclient import run as gen_run
from bench.procs import Server, free_port

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / ".out"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def worktree(ref: str) -> Path:
    """A checkout of `ref` under bench/.out/ (re-used when it is already at that commit)."""
    sha = subprocess.run(
        ["git", "rev-parse", "--verify", f"{ref}^{{commit}}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    path = OUT / f"base-{sha[:10]}"
    if not (path / "service").is_dir():
        subprocess.run(["git", "worktree", "prune"], cwd=REPO, check=True)
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(path), sha],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
    return path


def server(name: str, cwd: Path, models_root: Path, env: dict[str, str]) -> Server:
    port = free_port()
    # `-c` puts the working directory first on sys.path, so each server imports its own tree
    return Server(
        name,
        [sys.executable, "-c", "from service.server import serve; serve()"],
        f"http://127.0.0.1:{port}/readyz",
        f"http://127.0.0.1:{port}",
        {
            "RNNSERVE_MODELS_DIR": str(models_root),
            "RNNSERVE_PORT": str(port),
            "RNNSERVE_HOST": "127.0.0.1",
            "RNNSERVE_LOG_LEVEL": "warning",
            **env,
        },
        cwd=cwd,
        log=OUT / "logs" / f"ab-{name}.log",
    )


def _port(s: Server) -> int:
    return int(s.base.rsplit(":", 1)[1])


def gen_round(s: Server, path: str, streams: int, warm: float, secs: float) -> dict[str, Any]:
    body = {"prompt": "ROMEO:", "max_tokens": 200, "stream": True, "temperature": 1.0}
    s.wait_idle()
    cpu0, t0 = s.cpu(), time.perf_counter()
    r = gen_run("127.0.0.1", _port(s), path, body, streams, warm, secs, str(OUT / f"ab-{s.name}"))
    r["server_cpu"] = (s.cpu() - cpu0) / (time.perf_counter() - t0)
    r.pop("itl_sample", None)
    return r


def _wrk_round(s: Server, name: str, reqs: list[list[loadgen.Req]], secs: float) -> dict[str, Any]:
    prefix = OUT / f"ab-{name}-{s.name}"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    loadgen.write_requests(prefix, reqs)
    s.wait_idle()
    cpu0, t0 = s.cpu(), time.perf_counter()
    r = loadgen.run_wrk(s.base, prefix, 32, secs)
    out = {"rps": r.rps, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "errors": r.errors}
    out["server_cpu"] = (s.cpu() - cpu0) / (time.perf_counter() - t0)
    return out


def step_round(s: Server, m: targets.Models, secs: float) -> dict[str, Any]:
    h, c = workloads.sample_state(m)
    reqs = workloads.step_requests("rnnserve", s.base, m, h, c, 2, 32)
    return _wrk_round(s, "step", reqs, secs)


def classify_round(s: Server, m: targets.Models, texts: list[str], secs: float) -> dict[str, Any]:
    return _wrk_round(s, "classify", workloads.classify_requests("rnnserve", m, texts, 2), secs)


def session_round(s: Server, m: targets.Models, secs: float) -> dict[str, Any]:
    """One client, one session, short SSE generations back to back (10 tokens each): what the
    start and the end of a session stream cost (its lock, its commit), not the token rate."""
    import httpx

    s.wait_idle()
    times: list[float] = []
    with httpx.Client(base_url=s.base, timeout=30) as c:
        sid = c.post("/v1/sessions", json={"model": m.char_name}).json()["session_id"]
        c.post(f"/v1/sessions/{sid}/feed", json={"text": "ROMEO:"})
        body = {"max_tokens": 10, "stream": True}
        cpu0, t0 = s.cpu(), time.perf_counter()
        while time.perf_counter() - t0 < secs:
            t = time.perf_counter()
            r = c.post(f"/v1/sessions/{sid}/generate", json=body)
            if r.status_code != 200 or '"finish_reason"' not in r.text:
                raise RuntimeError(f"session generation failed: {r.status_code} {r.text[:200]}")
            times.append((time.perf_counter() - t) * 1e3)
        wall = time.perf_counter() - t0
    times.sort()
    return {
        "rps": len(times) / wall,
        "p50_ms": times[len(times) // 2],
        "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))],
        "server_cpu": (s.cpu() - cpu0) / wall,
    }


def summarise(rounds: list[dict[str, dict[str, Any]]], key: str) -> dict[str, float]:
    a = [r["A"][key] for r in rounds]
    b = [r["B"][key] for r in rounds]
    # a round where A measured 0 (an ITL p50 of 0: tokens that arrived together) has no ratio;
    # when no round has one the ratio is NaN, not a crash
    ratios = [y / x for x, y in zip(a, b, strict=True) if x]
    return {
        "A": statistics.median(a),
        "B": statistics.median(b),
        "B/A": statistics.median(ratios) if ratios else float("nan"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--base", required=True, help="git ref of the baseline (A); B = this tree")
    p.add_argument("--only", default="generate,step,classify")
    p.add_argument("--streams", default="1,16,64,256")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--env-a", action="append", default=[], help="KEY=VALUE for A's server")
    p.add_argument("--env-b", action="append", default=[], help="KEY=VALUE for B's server")
    p.add_argument(
        "--otlp-sink",
        nargs="?",
        const="b",
        choices=["b", "ab"],
        help="run an OTLP/gRPC receiver (bench/otlp_sink.py) and point B's traces at it "
        "(OTEL_EXPORTER_OTLP_ENDPOINT: tracing on in B), or both servers' with `ab` (give "
        "A the same OTEL_TRACES_SAMPLER* then, else the SDK's default samples every request; "
        "the spans reported are both servers')",
    )
    a = p.parse_args()
    only = set(a.only.split(","))
    (OUT / "logs").mkdir(parents=True, exist_ok=True)
    char = model.export_char_model()
    root = OUT / "ab-models"
    root.mkdir(parents=True, exist_ok=True)
    cls = model.artifact_dir(model.classifier_source())
    cls_name = model.classifier_source().name
    for name, src in ((model.CHAR, char), (cls_name, cls)):
        if not (root / name).exists():
            (root / name).symlink_to(src.resolve(), target_is_directory=True)
    mods = targets.Models(root, char, cls, model.CHAR, cls_name)

    def env(items: list[str]) -> dict[str, str]:
        return dict(x.split("=", 1) for x in items)

    sink = None
    if a.otlp_sink:
        sink_port = free_port()
        sink = subprocess.Popen(
            [sys.executable, "-m", "bench.otlp_sink", "--port", str(sink_port)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert sink.stdout is not None and sink.stdout.readline().startswith("listening")
        to = f"OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:{sink_port}"
        a.env_b.append(to)
        if a.otlp_sink == "ab":
            a.env_a.append(to)
    servers = {
        "A": server("A", worktree(a.base), root, env(a.env_a)),
        "B": server("B", REPO, root, env(a.env_b)),
    }
    res: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "base": a.base,
        "env_a": a.env_a,
        "env_b": a.env_b,
        "cpu": next(
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "load_before": Path("/proc/loadavg").read_text().split()[:3],
    }
    try:
        for s in servers.values():
            s.start()
        path = f"/v1/models/{model.CHAR}/generate"
        for s in servers.values():  # warm-up, discarded
            gen_round(s, path, 16, 0.3, 1.0)
        if "generate" in only:
            for n in [int(x) for x in a.streams.split(",")]:
                rounds = []
                for i in range(a.rounds):
                    order = ("A", "B") if i % 2 == 0 else ("B", "A")
                    rounds.append(
                        {k: gen_round(servers[k], path, n, a.warmup, a.seconds) for k in order}
                    )
                res[f"generate-{n}"] = {
                    "rounds": rounds,
                    "tokens_per_s": summarise(rounds, "tokens_per_s"),
                    "itl_p50_ms": summarise(rounds, "itl_p50_ms"),
                    "itl_p99_ms": summarise(rounds, "itl_p99_ms"),
                    "ttft_p50_ms": summarise(rounds, "ttft_p50_ms"),
                    "server_cpu": summarise(rounds, "server_cpu"),
                }
                t = res[f"generate-{n}"]["tokens_per_s"]
                log(f"generate {n}: A {t['A']:.0f} B {t['B']:.0f} tok/s, B/A {t['B/A']:.2f}")
        texts: list[str] = []
        if "classify" in only:
            from bench.__main__ import imdb_texts

            texts = imdb_texts()
        wrk_rounds: dict[str, Callable[[Server], dict[str, Any]]] = {
            "step": lambda srv: step_round(srv, mods, a.seconds),
            "classify": lambda srv: classify_round(srv, mods, texts, a.seconds),
            "session": lambda srv: session_round(srv, mods, a.seconds),
        }
        for name, one in wrk_rounds.items():
            if name not in only:
                continue
            rounds = []
            for i in range(a.rounds):
                order = ("A", "B") if i % 2 == 0 else ("B", "A")
                rounds.append({k: one(servers[k]) for k in order})
            res[name] = {
                "rounds": rounds,
                "rps": summarise(rounds, "rps"),
                "p50_ms": summarise(rounds, "p50_ms"),
                "p99_ms": summarise(rounds, "p99_ms"),
                "server_cpu": summarise(rounds, "server_cpu"),
            }
            t = res[name]["rps"]
            log(f"{name}: A {t['A']:.0f} B {t['B']:.0f} req/s, B/A {t['B/A']:.2f}")
    finally:
        for s in servers.values():
            s.stop()
        if sink is not None:
            sink.terminate()
            out, _ = sink.communicate(timeout=10)
            res["otlp_sink_spans"] = int(out.split()[-1])
    res["load_after"] = Path("/proc/loadavg").read_text().split()[:3]
    stamp = res["when"].replace(":", "")
    (OUT / f"ab-{stamp}.json").write_text(json.dumps(res, indent=1))
    print(table(res))


def table(res: dict[str, Any]) -> str:
    lines = [
        f"A = {res['base']} {' '.join(res['env_a'])}, B = this tree {' '.join(res['env_b'])}; "
        f"{res['cpu']}, {res['when']}, load {res['load_before']} -> {res['load_after']}"
        + (f"; {res['otlp_sink_spans']:,} spans exported" if "otlp_sink_spans" in res else ""),
        "",
        "| workload | metric | A | B | B/A (median of per-round ratios) |",
        "|---|---|---:|---:|---:|",
    ]
    for key, d in res.items():
        if not isinstance(d, dict) or "rounds" not in d:
            continue
        for metric, v in d.items():
            if metric == "rounds":
                continue
            lines.append(f"| {key} | {metric} | {v['A']:,.2f} | {v['B']:,.2f} | {v['B/A']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
