"""`python -m bench.engine_load`: what ONE engine process can feed, with the API workers taken
out of the measurement.

`bench.cost` measures the whole server: with one API worker on a 2-core machine the worker is
the limit, the engine steps ahead of it whenever a stream is open, and its CPU per token is then
about its busy share of a core divided by the worker's tokens/s, whatever a step costs (the
decode batch averaged 28 of 256 streams: docs/benchmarks.md). Here the engine process is the
limit: it runs on its own (the same `running_engine` and `EngineHost` the supervisor starts),
and a load process speaks the wire to it directly, as an API worker would, but does nothing with
the tokens except count them and open the next stream. The engine's CPU per streamed token and
per session step, measured this way, is what decides how many tokens/s and steps/s one engine
process can feed to a device.

    python -m bench.engine_load                              # this tree
    python -m bench.engine_load --base 1c11ec6 --rounds 3    # and a baseline ref, interleaved

Writes bench/.out/engine-load-<UTC>.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import zmq

from bench.procs import cpu_seconds

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / ".out"
MODELS = REPO / "tests" / "fixtures" / "models"
LM = "tiny-char-lstm"

# The engine process, started from the tree under test (`-c` puts its directory first on
# sys.path) through the entry the supervisor uses (`engine_main`: its GIL switch interval, its
# frozen start-up heap, its event loop), with a pipe standing in for the supervisor's.
ENGINE = """
import sys, threading
from multiprocessing import Pipe
from service.settings import Settings
from service.supervisor.control import Ready, Stop
from service.supervisor.engine_process import engine_main

ours, theirs = Pipe()

def supervise():
    assert isinstance(ours.recv(), Ready)
    print("ready", flush=True)
    sys.stdin.read()  # until the bench closes it
    ours.send(Stop())

threading.Thread(target=supervise, daemon=True).start()
engine_main(Settings().model_dump(), sys.argv[1], theirs)
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Engine:
    def __init__(
        self,
        cwd: Path,
        max_streams: int,
        models: Path = MODELS,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="rnnserve-bench-")
        self.address = f"ipc://{self.dir.name}/engine.sock"
        env = {
            **os.environ,
            "RNNSERVE_MODELS_DIR": str(models),
            "RNNSERVE_MAX_STREAMS": str(max_streams),
            "RNNSERVE_MAX_QUEUE": str(4 * max_streams),
            "RNNSERVE_LOG_LEVEL": "warning",
            # as `rnnserve serve` sets it (service/server.py) before numpy loads: OpenBLAS's
            # own threads spin between the sampler's small matrix products (found here: a
            # thread burning most of a core)
            "OPENBLAS_NUM_THREADS": "1",
            **(settings or {}),  # RNNSERVE_* (bench.gpu_check: providers, variant)
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ENGINE, self.address],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the engine did not start")

    def cpu(self) -> float:
        return cpu_seconds([self.proc.pid])

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # the engine's stand-in supervisor says Stop
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.dir.cleanup()


# -- the load process: a worker's half of the wire, encoded by hand so one client speaks to any
# tree's engine (every frame is a msgpack map tagged by "type"; only the calls it makes and the
# frames it counts are spelled here)


def _call(rid: int, op: dict[str, Any]) -> bytes:
    return msgspec.msgpack.encode({"type": "call", "rid": rid, "op": op})


def _generate(max_tokens: int, model: str) -> dict[str, Any]:
    params = {"prompt": "ROMEO:", "max_tokens": max_tokens, "temperature": 1.0}
    return {"type": "generate", "model": model, "params": params}


def _tokens(frame: dict[str, Any]) -> int:
    kind = frame.get("type")
    if kind == "ids":  # wire 12: two little-endian arrays
        return len(frame["ids"]) // 4
    if kind == "step":  # wire 11: columns
        return len(frame["rids"])
    if kind == "tokens":
        return len(frame["tokens"])
    return 0


class _Worker:
    """A worker's kind of socket to the engine (no high-water mark, as the workers have). It
    says Hello first, alone in its message as every worker does, and from an engine of wire
    version 15 on sends the calls one pass of its loop makes as ONE message, as a worker's
    channel does (service/transport/channel.py); to an older engine, one message a call."""

    def __init__(self, address: str, identity: bytes) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.sock: zmq.Socket[bytes] = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, identity)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.connect(address)
        self.sock.send(_call(0, {"type": "hello", "wire_version": 0}))
        info = None
        while info is None:
            for f in msgspec.msgpack.decode(self.sock.recv()):
                if f.get("type") == "result" and f.get("rid") == 0:
                    info = f["value"]
        self.batches = info["wire_version"] >= 15
        self._pending: list[bytes] = []

    def call(self, rid: int, op: dict[str, Any]) -> None:
        if self.batches:
            self._pending.append(_call(rid, op))
        else:
            self.sock.send(_call(rid, op))

    def flush(self) -> None:
        """The calls made since the last flush, as one message."""
        if self._pending:
            self.sock.send(msgspec.msgpack.encode([msgspec.Raw(c) for c in self._pending]))
            self._pending = []

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def streams_load(address: str, n: int, seconds: float, warm: float, model: str) -> dict[str, Any]:
    """Keep `n` generations open (each ended one replaced at once) and count tokens in a
    window; returns the window's bounds so the engine's CPU is read over the same span."""
    # a load process of its own identity: the last load's streams, still running out their
    # tokens, are not counted as this one's (nor replaced by new ones past `n`)
    w = _Worker(address, f"bench-load-{os.getpid()}".encode())
    sock = w.sock
    rid = 0
    for _ in range(n):
        rid += 1
        w.call(rid, _generate(200, model))
    w.flush()
    tokens = ended = errors = 0
    start = time.perf_counter()
    window = (start + warm, start + warm + seconds)
    counted = 0
    while True:
        now = time.perf_counter()
        if now >= window[1]:
            break
        if not sock.poll(100):
            continue
        frames = msgspec.msgpack.decode(sock.recv())
        got = 0
        for f in frames:
            got += _tokens(f)
            if f.get("type") in ("result", "failed"):
                ended += 1
                errors += f.get("type") == "failed"
                rid += 1
                w.call(rid, _generate(200, model))
        w.flush()
        tokens += got
        if window[0] <= now:
            counted += got
    w.close()
    return {"tokens": counted, "streams_ended": ended, "errors": errors, "window": window}


def step_load(
    address: str, clients: int, seconds: float, warm: float, model: str
) -> dict[str, Any]:
    """`clients` sessions, each fed one character at a time with one feed in flight."""
    w = _Worker(address, b"bench-step")
    sock = w.sock
    sessions: dict[int, str] = {}
    for i in range(clients):
        op = {"type": "create_session", "model": model, "session_id": None, "ttl_s": None,
              "state": None, "owner": None}  # fmt: skip
        w.call(i + 1, op)
    w.flush()
    while len(sessions) < clients:
        for f in msgspec.msgpack.decode(sock.recv()):
            if f.get("type") == "result":
                sessions[f["rid"]] = f["value"]["session_id"]  # (an answer is inline)
    rid = clients

    def feed(sid: str) -> None:
        nonlocal rid
        rid += 1
        owner_of[rid] = sid
        op = {"type": "feed", "session_id": sid, "text": "a", "top_k": 5,
              "expected_version": None, "key": None, "owner": None}  # fmt: skip
        w.call(rid, op)

    owner_of: dict[int, str] = {}
    for sid in sessions.values():
        feed(sid)
    w.flush()
    done = errors = 0
    start = time.perf_counter()
    window = (start + warm, start + warm + seconds)
    while time.perf_counter() < window[1]:
        if not sock.poll(100):
            continue
        now = time.perf_counter()
        for f in msgspec.msgpack.decode(sock.recv()):
            sid = owner_of.pop(f["rid"], None)
            if sid is None:
                continue
            errors += f.get("type") == "failed"
            if window[0] <= now:
                done += 1
            feed(sid)
        w.flush()
    w.close()
    return {"steps": done, "errors": errors, "window": window}


def _load_main() -> None:
    """Entry of the load process: `kind address n seconds warm model` -> JSON on stdout."""
    kind, address, n, seconds, warm, model = sys.argv[2:8]
    run = streams_load if kind == "streams" else step_load
    print(json.dumps(run(address, int(n), float(seconds), float(warm), model)), flush=True)


def measure(
    engine: Engine, kind: str, n: int, seconds: float, warm: float, model: str = LM
) -> dict[str, Any]:
    """One load run in its own process; the engine's CPU read at the window's bounds."""
    load = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.engine_load",
            "--load",
            kind,
            engine.address,
            str(n),
            str(seconds),
            str(warm),
            model,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(warm + 0.5)  # (the load's own start comes first: its window is later than ours)
    cpu0, at0 = engine.cpu(), time.perf_counter()
    time.sleep(max(0.0, seconds - 1.0))
    cpu1, at1 = engine.cpu(), time.perf_counter()
    out, _ = load.communicate(timeout=seconds + warm + 60)
    r = json.loads(out)
    share = (at1 - at0) / seconds  # the part of the load's window the CPU was read over
    count = r["tokens"] if kind == "streams" else r["steps"]
    per = (cpu1 - cpu0) / max(1.0, count * share) * 1e6
    rate = count / seconds
    return {"n": n, "rate": rate, "us_per_unit": round(per, 3), "errors": r["errors"]}


def run_once(cwd: Path, counts: list[int], seconds: float) -> dict[str, Any]:
    engine = Engine(cwd, max(counts))
    try:
        out: dict[str, Any] = {"step": measure(engine, "step", 32, seconds, 2.0)}
        for n in counts:
            out[f"streams-{n}"] = measure(engine, "streams", n, seconds, 2.0)
        return out
    finally:
        engine.stop()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--load":
        _load_main()
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", help="a git ref to measure beside this tree (A = base, B = tree)")
    ap.add_argument("--streams", default="256,1024,4096")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    counts = [int(x) for x in a.streams.split(",")]
    # (imported here: bench.ab pins the peers' venvs to this onnxruntime's version, and
    # bench.gpu_check uses this module where only onnxruntime-gpu is installed)
    from bench.ab import worktree

    targets = [(f"A:{a.base}", worktree(a.base))] if a.base else []
    targets.append(("B:tree" if a.base else "tree", REPO))
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in targets}
    for r in range(a.rounds):
        order = targets if r % 2 == 0 else targets[::-1]  # alternate who goes first
        for name, cwd in order:
            log(f"round {r + 1}/{a.rounds}: {name}")
            res = run_once(cwd, counts, a.seconds)
            for k, v in res.items():
                log(f"  {k}: {v['rate']:.0f}/s, engine {v['us_per_unit']} us CPU each, "
                    f"errors {v['errors']}")  # fmt: skip
            results[name].append(res)
    rows = ["| workload | " + " | ".join(results) + (" | B/A |" if len(results) == 2 else " |")]
    rows.append("|---" * (1 + len(results) + (len(results) == 2)) + "|")
    for key in ["step", *(f"streams-{n}" for n in counts)]:
        unit = "session step" if key == "step" else "token"
        for field, label in [("us_per_unit", f"engine µs CPU / {unit}"), ("rate", "per s")]:
            vals = [statistics.median(x[key][field] for x in v) for v in results.values()]
            ratio = f" {vals[1] / vals[0]:.2f} |" if len(vals) == 2 and vals[0] else ""
            cells = " | ".join(f"{v:.2f}" if field == "us_per_unit" else f"{v:.0f}" for v in vals)
            rows.append(f"| {key} {label} | {cells} |{ratio}")
    table = "\n".join(rows)
    print(table)
    OUT.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = OUT / f"engine-load-{stamp}.json"
    path.write_text(json.dumps({"results": results, "table": table}, indent=1))
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
