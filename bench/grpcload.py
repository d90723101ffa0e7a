"""A closed-loop gRPC load generator for the v2 `GRPCInferenceService` (rnnserve's and Triton's):
what wrk is to the HTTP workloads, for `bench/grpc.py`.

    python -m bench.grpcload SPEC.json      # one process; `run_clients` starts and reads them

Each of `clients` clients holds its own channel (its own TCP connection, as each of wrk's
connections is one, so that at `--workers N` the kernel spreads them over the API workers) and
keeps one request in flight: the next is sent when the previous answer arrives. `mode` is
`unary` (one `ModelInfer` call per request) or `stream` (one `ModelStreamInfer` stream per
client for the whole run, a request written when the previous response was read).

The client is kept lean because it shares the machine's cores with the server: requests are
serialized once before the run and sent as bytes, responses are not parsed (a stream's error
answer is told from a good one by its first byte; a unary error is a gRPC status). Its own CPU
over the measured window (all its threads: grpcio's C core polls in its own) is reported, so a
saturated client is visible, as wrk's is.

Protocol with the parent, on stdin/stdout: the process builds its requests and channels, prints
`READY`, waits for a line on stdin (`GO`, sent to every client process at once), runs `warm`
seconds unmeasured then `seconds` measured, and prints one `BENCHJSON {...}` line.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
# ModelStreamInferResponse: `error_message` is field 1 (a length-delimited tag byte 0x0a); a
# good answer omits the empty string and starts with `infer_response`, field 2 (0x12)
_STREAM_ERROR = 0x0A


@dataclass(frozen=True)
class Spec:
    target: str  # host:port
    mode: str  # "unary" | "stream"
    kind: str  # "rnnserve" (a server-held sequence per client) | "pytriton" (client-held state)
    model: str
    clients: int
    warm: float
    seconds: float
    seq_prefix: str = "bench"  # rnnserve: client i's sequence id is f"{seq_prefix}-{i}"
    state: str = ""  # pytriton: an .npz with the (h, c) every request carries

    def to_json(self) -> str:
        return json.dumps(self.__dict__)


# -- requests ------------------------------------------------------------------------------


def _bytes_tensor(values: Sequence[str]) -> bytes:
    """A BYTES tensor's raw contents: per element a 4-byte little-endian length, the bytes."""
    out = bytearray()
    for v in values:
        b = v.encode()
        out += len(b).to_bytes(4, "little") + b
    return bytes(out)


def build_requests(spec: Spec, client: int) -> tuple[bytes | None, list[bytes]]:
    """(the request that opens client `client`'s sequence, or None; the step requests it
    cycles through), serialized. The same step workload as the HTTP one (`workloads.step_requests`):
    one character a request, 16 distinct characters of `STEP_TEXT`, after feeding all of it."""
    from bench.workloads import STEP_TEXT
    from service.api.grpc import inference_pb2 as pb

    chars = list(dict.fromkeys(STEP_TEXT))[:16]
    if spec.kind == "rnnserve":
        sid = f"{spec.seq_prefix}-{client}"

        def step(text: str, start: bool) -> bytes:
            req = pb.ModelInferRequest(model_name=spec.model)
            req.parameters["sequence_id"].string_param = sid
            if start:
                req.parameters["sequence_start"].bool_param = True
            req.inputs.add(name="TEXT", datatype="BYTES", shape=[1])
            req.raw_input_contents.append(_bytes_tensor([text]))
            return bytes(req.SerializeToString())

        return step(STEP_TEXT, True), [step(ch, False) for ch in chars]
    # PyTriton's `step` model (bench/peers/pytriton_server.py): the client carries (h, c),
    # batch-first rows, and replays a fixed realistic state, as its HTTP requests do
    st = np.load(spec.state)
    hb = np.ascontiguousarray(st["h"].transpose(1, 0, 2), np.float32)
    cb = np.ascontiguousarray(st["c"].transpose(1, 0, 2), np.float32)
    reqs = []
    for ch in chars:
        req = pb.ModelInferRequest(model_name=spec.model)
        req.inputs.add(name="text", datatype="BYTES", shape=[1, 1])
        req.raw_input_contents.append(_bytes_tensor([ch]))
        for name, a in (("h", hb), ("c", cb)):
            req.inputs.add(name=name, datatype="FP32", shape=list(a.shape))
            req.raw_input_contents.append(a.tobytes())
        for name in ("logits", "h", "c"):
            req.outputs.add(name=name)
        reqs.append(req.SerializeToString())
    return None, reqs


def channel_options() -> list[tuple[str, Any]]:
    # grpcio shares one connection among channels to the same target unless each has its own
    # subchannel pool: a client per connection needs this
    return [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1)]


# -- the load ------------------------------------------------------------------------------


class _Window:
    """The measured window: completions inside it count, with their latencies."""

    def __init__(self) -> None:
        self.start = float("inf")
        self.end = float("inf")
        self.lat: list[float] = []
        self.errors = 0
        self.first_error = ""

    def record(self, t0: float, ok: bool, what: str = "") -> None:
        t1 = time.perf_counter()
        if self.start <= t1 <= self.end:
            if ok:
                self.lat.append(t1 - t0)
            else:
                self.errors += 1
                self.first_error = self.first_error or what[:300]


async def _unary(spec: Spec, i: int, w: _Window, stop: asyncio.Event) -> None:
    import grpc

    first, steps = build_requests(spec, i)
    async with grpc.aio.insecure_channel(spec.target, options=channel_options()) as ch:
        call = ch.unary_unary(INFER)  # no (de)serializers: bytes in, bytes out
        if first is not None:
            await call(first)
        n = 0
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                await call(steps[n % len(steps)])
                w.record(t0, True)
            except grpc.aio.AioRpcError as e:
                w.record(t0, False, f"{e.code()}: {e.details()}")
            n += 1


async def _stream(spec: Spec, i: int, w: _Window, stop: asyncio.Event) -> None:
    import grpc

    first, steps = build_requests(spec, i)
    async with grpc.aio.insecure_channel(spec.target, options=channel_options()) as ch:
        call = ch.stream_stream(STREAM)()
        if first is not None:
            await call.write(first)
            await call.read()
        n = 0
        while not stop.is_set():
            t0 = time.perf_counter()
            await call.write(steps[n % len(steps)])
            resp = await call.read()
            if resp is grpc.aio.EOF:
                raise RuntimeError(f"the stream ended: {await call.code()}")
            ok = bool(resp) and resp[0] != _STREAM_ERROR
            w.record(t0, ok, "" if ok else repr(resp[:300]))
            n += 1
        await call.done_writing()  # then the server ends the call (all answers were read)
        if await call.code() != grpc.StatusCode.OK:
            raise RuntimeError(f"the stream ended with {await call.code()}")


async def _run(spec: Spec) -> dict[str, Any]:
    w, stop = _Window(), asyncio.Event()
    one = _unary if spec.mode == "unary" else _stream
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    t_go = time.perf_counter()
    tasks = [asyncio.create_task(one(spec, i, w, stop)) for i in range(spec.clients)]
    await asyncio.sleep(max(0.0, t_go + spec.warm - time.perf_counter()))
    ru0, w.start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    w.end = w.start + spec.seconds
    await asyncio.sleep(spec.seconds)
    ru1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    stop.set()
    await asyncio.gather(*tasks)
    lat = np.asarray(w.lat) * 1e6  # µs, as wrk's Lua reports
    cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    return {
        "requests": len(w.lat) + w.errors,
        "ok": len(w.lat),
        "errors": w.errors,
        "first_error": w.first_error,
        "duration_us": (t1 - w.start) * 1e6,
        "client_cpu_s": cpu,
        "lat_us": lat.round(1).tolist(),
    }


def main() -> None:
    spec = Spec(**json.loads(Path(sys.argv[1]).read_text()))
    print("BENCHJSON " + json.dumps(asyncio.run(_run(spec))), flush=True)


# -- the parent's side ---------------------------------------------------------------------


def run_clients(
    spec: Spec, procs: int, scratch: Path, server_cpu: Callable[[], float]
) -> dict[str, Any]:
    """Run `spec.clients` clients over `procs` processes; returns a result with wrk's fields
    (`loadgen.WrkResult`) and `server_cpu`, the cores `server_cpu()` (CPU seconds) grew by over
    the measured window, read by a thread at the window's edges while the clients run."""
    scratch.mkdir(parents=True, exist_ok=True)
    cpu: list[float] = []

    def sample(t_go: float) -> None:
        for edge in (t_go + spec.warm, t_go + spec.warm + spec.seconds):
            time.sleep(max(0.0, edge - time.perf_counter()))
            cpu.append(server_cpu())

    ps: list[subprocess.Popen[str]] = []
    share = [spec.clients // procs + (k < spec.clients % procs) for k in range(procs)]
    try:
        for k, n in enumerate(x for x in share if x):
            path = scratch / f"grpcload-{os.getpid()}-{k}.json"
            part = Spec(**{**spec.__dict__, "clients": n, "seq_prefix": f"{spec.seq_prefix}.{k}"})
            path.write_text(part.to_json())
            # the client runs at a slightly higher priority, as wrk does (bench/loadgen.py)
            ps.append(
                subprocess.Popen(
                    ["nice", "-n", "-5", sys.executable, "-m", "bench.grpcload", str(path)],
                    cwd=REPO,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for p in ps:
            assert p.stdout is not None
            line = p.stdout.readline()
            if line.strip() != "READY":
                raise RuntimeError(f"gRPC client did not start: {line!r}")
        t_go = time.perf_counter()
        for p in ps:
            assert p.stdin is not None
            p.stdin.write("GO\n")
            p.stdin.flush()
        sampler = threading.Thread(target=sample, args=(t_go,), daemon=True)
        sampler.start()
        outs = []
        for p in ps:
            assert p.stdout is not None
            out = p.stdout.read()
            if p.wait() != 0:
                raise RuntimeError(f"gRPC client failed ({p.returncode}): {out[-800:]}")
            outs.append(json.loads(out.split("BENCHJSON ", 1)[1]))
        sampler.join()
    finally:
        for p in ps:
            if p.poll() is None:
                p.kill()
                p.wait()
    lat = np.concatenate([np.asarray(o["lat_us"], np.float64) for o in outs]) / 1e3
    dur = float(np.mean([o["duration_us"] for o in outs])) / 1e6
    ok = sum(int(o["ok"]) for o in outs)
    errors = [o["first_error"] for o in outs if o["first_error"]]
    res: dict[str, Any] = {
        "rps": ok / dur if dur else 0.0,
        "requests": sum(int(o["requests"]) for o in outs),
        "errors": sum(int(o["errors"]) for o in outs),
        "p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
        "p90_ms": float(np.percentile(lat, 90)) if lat.size else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if lat.size else float("nan"),
        "mean_ms": float(lat.mean()) if lat.size else float("nan"),
        "client_cpu": sum(float(o["client_cpu_s"]) for o in outs) / dur if dur else 0.0,
        "duration_s": dur,
        "client_procs": len(outs),
        "server_cpu": (cpu[1] - cpu[0]) / spec.seconds,
    }
    if errors:
        res["first_error"] = errors[0]
    return res


if __name__ == "__main__":
    main()
