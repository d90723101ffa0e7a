"""`python -m bench.grpc`: session steps over gRPC against HTTP, and against PyTriton's gRPC.

One character per request on a server-held sequence (the `python -m bench` session-step
workload, `workloads.step_requests`: each client's sequence is first fed `STEP_TEXT`, then steps
through 16 of its characters), `--clients` concurrent clients in a closed loop, through:

* `rnnserve-http`: the native feed route `POST /v1/sessions/{id}/feed` (wrk, as `python -m bench`
  runs it, so its figure is the docs' "session step");
* `rnnserve-http-v2`: the same steps as v2 HTTP inference requests with Triton's `sequence_id`
  (JSON, the `PROBS` output): the same protocol as the gRPC rows, over HTTP/1.1;
* `rnnserve-grpc`: unary `ModelInfer` with Triton's `sequence_id` (the first step with
  `sequence_start`), a channel (TCP connection) per client;
* `rnnserve-grpc-stream`: one `ModelStreamInfer` stream per client, the next step written when
  the previous answer is read;
* PyTriton (its own venv, `--no-peers` leaves it out): `pytriton-bin`, its HTTP step with binary
  tensors (the reference of the docs' tables), and the same step over its gRPC, unary
  (`pytriton-grpc`) and on a stream per client (`pytriton-grpc-stream`). PyTriton has no
  server-held state: its requests carry (h, c) and its answers return the new one.

All targets are up at once and run in alternating rounds (every target once per round), so a
shared machine's drift hits them alike; ratios are medians of same-round ratios. The gRPC
clients are Python (`bench/grpcload.py`: requests serialized once, answers not parsed) and
share the cores with the server, as wrk does; each row gives the client's cores.

    python -m bench.grpc                           # 3 rounds x 8 s, 32 clients, ~5 min on 2 cores
    python -m bench.grpc --rounds 1 --seconds 2 --no-peers
    python -m bench.grpc --workers 2 --clients 64

Writes bench/results/grpc-<UTC>.{json,md} (or `--out`) and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import loadgen, model, stats, targets, venvs, workloads
from bench.grpcload import STREAM, Spec, build_requests, channel_options, run_clients
from bench.procs import Server, free_port

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / ".out"
RESULTS = REPO / "bench" / "results"
REF = "rnnserve-http"
OURS = ("rnnserve-http", "rnnserve-http-v2", "rnnserve-grpc", "rnnserve-grpc-stream")
PEERS = ("pytriton-bin", "pytriton-grpc", "pytriton-grpc-stream")
ALL = OURS + PEERS


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- servers -------------------------------------------------------------------------------


def rnnserve(m: targets.Models, workers: int, grpc_port: int) -> Server:
    """rnnserve at `--workers N` with its gRPC endpoint on (`RNNSERVE_GRPC_PORT`)."""
    return targets.rnnserve(m, "grpc-rnnserve", workers=str(workers), grpc_port=str(grpc_port))


def pytriton_grpc_port(srv: Server) -> int:
    # `targets.pytriton` passes its ports as HTTP_PORT GRPC_PORT METRICS_PORT after the script
    return int(srv.argv[3])


def models(char: Path | None) -> targets.Models:
    """The suite's models (`bench-char-lstm`, what `python -m bench`'s step uses), or a given
    char model (the tests' fixture) in a models folder of its own."""
    if char is None:
        mdir = model.models_dir()
        return targets.Models(
            mdir, mdir / model.CHAR, mdir / "classifier", model.CHAR, model.classifier_name()
        )
    src = model.artifact_dir(char)
    name = str(json.loads((src / "manifest.json").read_text())["name"])
    root = OUT / "grpc-models"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(src, root / name)
    cls = model.artifact_dir(model.classifier_source())  # PyTriton serves one too
    return targets.Models(root, root / name, cls, name, "")


# -- probes: each target's answer is checked before it is loaded ---------------------------


def probe_grpc(spec: Spec) -> str | None:
    """None if a sequence's opening and one step answer with outputs; else what went wrong."""
    import grpc

    from service.api.grpc import inference_pb2 as pb

    first, steps = build_requests(spec, 0)
    reqs = ([first] if first is not None else []) + steps[:2]
    with grpc.insecure_channel(spec.target, options=channel_options()) as ch:
        try:
            if spec.mode == "unary":
                call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
                answers = [pb.ModelInferResponse.FromString(call(r, timeout=30)) for r in reqs]
            else:
                stream = ch.stream_stream(STREAM)(iter(reqs), timeout=30)
                answers = []
                for raw in stream:
                    msg = pb.ModelStreamInferResponse.FromString(raw)
                    if msg.error_message:
                        return str(msg.error_message)
                    answers.append(msg.infer_response)
        except grpc.RpcError as e:
            return f"{e.code()}: {e.details()}"
    if len(answers) != len(reqs) or not all(a.outputs and a.raw_output_contents for a in answers):
        return f"{len(answers)} answers to {len(reqs)} requests: {answers[-1:]}"
    return None


# -- the run -------------------------------------------------------------------------------


def run(a: argparse.Namespace) -> dict[str, Any]:
    from bench.__main__ import EXPECT, machine

    want = [t for t in a.targets.split(",") if t and not (a.no_peers and t in PEERS)]
    unknown = set(want) - set(ALL)
    if unknown:
        raise SystemExit(f"unknown targets {sorted(unknown)}; known: {', '.join(ALL)}")
    (OUT / "logs").mkdir(parents=True, exist_ok=True)
    mods = models(a.model)
    import grpc

    res: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "machine": machine() | {"grpcio": grpc.__version__},
        "load_before": os.getloadavg(),
        "model": mods.char_name,
        "clients": a.clients,
        "client_procs": a.client_procs,
        "workers": a.workers,
        "rounds": a.rounds,
        "seconds": a.seconds,
        "warm": a.warm,
    }
    log(f"machine: {res['machine']}; load {res['load_before']}")
    servers: dict[str, Server] = {}
    grpc_at: dict[str, str] = {}
    try:
        if any(t.startswith("rnnserve") for t in want):
            gport = free_port()
            srv = rnnserve(mods, a.workers, gport)
            log(f"start rnnserve (--workers {a.workers}, gRPC on {gport})")
            srv.start(timeout=120)
            time.sleep(2.0 if a.workers else 0.5)  # (the workers answer readiness one by one)
            servers["rnnserve"], grpc_at["rnnserve"] = srv, f"127.0.0.1:{gport}"
        if any(t in PEERS for t in want):
            try:
                log("venv pytriton: installing/checking")
                venvs.ensure("pytriton", OUT / "install-pytriton.log")
                res["peer_versions"] = {"pytriton": venvs.versions("pytriton")}
                srv = targets.SERVERS["pytriton"](mods)
                log("start pytriton")
                srv.start(timeout=180)
                time.sleep(2.0)
                servers["pytriton"] = srv
                grpc_at["pytriton"] = f"127.0.0.1:{pytriton_grpc_port(srv)}"
            except Exception as e:  # the peer is optional: our three rows still compare
                log(f"PyTriton left out: {e}")
                res["pytriton_error"] = str(e)
        want = [t for t in want if t.split("-")[0] in servers]

        h, c = workloads.sample_state(mods)
        state = OUT / "reqs" / "grpc-state.npz"
        state.parent.mkdir(parents=True, exist_ok=True)
        np.savez(state, h=h, c=c)
        http: dict[str, Path] = {}
        specs: dict[str, Spec] = {}
        for t in list(want):
            srv = servers[t.split("-")[0]]
            if t in ("rnnserve-http", "rnnserve-http-v2", "pytriton-bin"):
                kind = {"rnnserve-http": "rnnserve", "rnnserve-http-v2": "rnnserve-v2"}.get(
                    t, "pytriton-bin"
                )
                prefix = OUT / "reqs" / f"grpc-step-{t}"
                per = workloads.step_requests(kind, srv.base, mods, h, c, 2, a.clients)
                loadgen.write_requests(prefix, per)
                status, body = loadgen.probe(
                    srv.base, loadgen.read_requests(Path(f"{prefix}.0"))[0]
                )
                good = status == 200 and any(k in body for k in (*EXPECT["step"], b'"PROBS"'))
                problem = None if good else f"{status} {body[:200]!r}"
                http[t] = prefix
            else:
                ours = t.startswith("rnnserve")
                specs[t] = Spec(
                    target=grpc_at[t.split("-")[0]],
                    mode="stream" if t.endswith("stream") else "unary",
                    kind="rnnserve" if ours else "pytriton",
                    model=mods.char_name if ours else "step",
                    clients=a.clients,
                    warm=a.warm,
                    seconds=a.seconds,
                    seq_prefix=f"probe-{t}-{os.getpid()}",
                    state=str(state),
                )
                problem = probe_grpc(specs[t])
            log(f"probe {t}: {'ok' if problem is None else problem + '  <- WRONG, left out'}")
            if problem is not None:
                want.remove(t)
                res.setdefault("probe_errors", {})[t] = problem

        runs: dict[str, list[dict[str, Any]]] = {t: [] for t in want}
        for r in range(a.rounds):
            for t in want:
                srv = servers[t.split("-")[0]]
                if t in http:
                    loadgen.run_wrk(srv.base, http[t], a.clients, a.warm)
                    cpu0, t0 = srv.cpu(), time.perf_counter()
                    out = loadgen.run_wrk(srv.base, http[t], a.clients, a.seconds).as_dict()
                    out["server_cpu"] = (srv.cpu() - cpu0) / (time.perf_counter() - t0)
                else:
                    # fresh sequences each round, opened with `sequence_start`
                    spec = Spec(**{**specs[t].__dict__, "seq_prefix": f"r{r}-{t}-{os.getpid()}"})
                    out = run_clients(spec, a.client_procs, OUT / "reqs", srv.cpu)
                out["server_us_per_step"] = (
                    out["server_cpu"] / out["rps"] * 1e6 if out["rps"] else 0
                )
                runs[t].append(out)
                log(
                    f"round {r + 1} {t}: {out['rps']:.0f} req/s p50 {out['p50_ms']:.2f} ms "
                    f"p99 {out['p99_ms']:.2f} ms errors {out['errors']} client CPU "
                    f"{out['client_cpu']:.2f} server CPU {out['server_cpu']:.2f} "
                    f"({out['server_us_per_step']:.0f} µs/step)"
                    + (f" first error: {out['first_error']}" if out.get("first_error") else "")
                )
    finally:
        for srv in servers.values():
            srv.stop()
    summary = stats.summarize(runs, refs=(REF, "pytriton-grpc", "pytriton-grpc-stream"))
    for t, s in summary.items():
        s["server_us_per_step"] = statistics.median(x["server_us_per_step"] for x in runs[t])
    res["targets"] = summary
    res["runs"] = runs
    res["load_after"] = os.getloadavg()
    return res


def table(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores, {m['mem_gb']} GB, Linux {m['kernel']}, "
        f"Python {m['python']}, grpcio {m['grpcio']}, onnxruntime {m['onnxruntime']}; load "
        f"before {[round(x, 2) for x in res['load_before']]}, after "
        f"{[round(x, 2) for x in res['load_after']]}",
        f"session step (one character a request) on `{res['model']}`, {res['clients']} clients, "
        f"rnnserve --workers {res['workers']}, {res['rounds']} rounds x {res['seconds']:g} s "
        "(medians over rounds; ratios: median of same-round ratios)",
        "",
        "| target | req/s | × rnnserve HTTP | p50 ms | p99 ms | errors | server cores "
        "| server µs CPU / step | client cores |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t, s in res["targets"].items():
        x = "1.00" if t == REF else (f"{s[f'x_{REF}']:.2f}" if f"x_{REF}" in s else "–")
        lines.append(
            f"| {t} | {s['rps']:,.0f} | {x} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | "
            f"{s['errors']} | {s['server_cpu']:.2f} | {s['server_us_per_step']:.0f} | "
            f"{s['client_cpu']:.2f} |"
        )
    stream = res["targets"].get("rnnserve-grpc-stream", {})
    if f"x_{REF}" in stream:
        peers = [
            f"{stream[f'x_{p}']:.2f}× {p}"
            for p in ("pytriton-grpc", "pytriton-grpc-stream")
            if f"x_{p}" in stream
        ]
        lines += [
            "",
            f"gRPC streaming: {stream[f'x_{REF}']:.2f}× rnnserve HTTP's req/s (target ≥ 1.5, "
            "must ≥ 1)" + (f"; {', '.join(peers)}" if peers else ""),
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.grpc",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0, help="measured, per target per round")
    ap.add_argument("--warm", type=float, default=2.0, help="unmeasured, before each measurement")
    ap.add_argument(
        "--clients", type=int, default=32, help="concurrent clients (even: wrk's 2 threads)"
    )
    ap.add_argument("--client-procs", type=int, default=1, help="processes the gRPC clients use")
    ap.add_argument("--workers", type=int, default=0, help="rnnserve API workers (0: one process)")
    ap.add_argument("--targets", default=",".join(ALL), help="comma-separated: " + ", ".join(ALL))
    ap.add_argument("--no-peers", action="store_true", help="leave PyTriton out")
    ap.add_argument(
        "--model", type=Path, default=None, help="a char model folder (default: the suite's)"
    )
    ap.add_argument("--out", type=Path, default=None, help="the JSON (the .md beside it)")
    a = ap.parse_args(argv)
    if a.clients < 2 or a.clients % 2:
        ap.error("--clients must be even (wrk's 2 threads take half each)")
    t0 = time.time()
    res = run(a)
    res["wall_s"] = time.time() - t0
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = a.out or RESULTS / f"grpc-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    md = table(res)
    out.with_suffix(".md").write_text(md)
    print(md)
    log(f"done in {res['wall_s']:.0f} s -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
