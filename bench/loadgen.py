"""Load generation with `wrk` (Debian package) replaying pre-built requests (bench/wrk/replay.lua).

The client's own CPU (user + system of the wrk process, from wait4's rusage) is reported with
every run, so a saturated client is visible.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

LUA = Path(__file__).resolve().parent / "wrk" / "replay.lua"


@dataclass(frozen=True)
class Req:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def write_requests(prefix: Path, per_thread: list[list[Req]]) -> None:
    """One file per wrk thread: `<prefix>.<i>`."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for i, reqs in enumerate(per_thread):
        with open(f"{prefix}.{i}", "wb") as f:
            for r in reqs:
                f.write(f"{r.method}\n{r.path}\n{len(r.headers)}\n".encode())
                for k, v in r.headers.items():
                    f.write(f"{k}\n{v}\n".encode())
                f.write(f"{len(r.body)}\n".encode() + r.body + b"\n")


@dataclass
class WrkResult:
    rps: float
    requests: int
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    client_cpu: float  # cores used by wrk (CPU seconds / wall seconds)
    duration_s: float

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def parse_wrk(output: str) -> dict[str, float]:
    """The BENCHJSON line our Lua `done()` prints."""
    for line in output.splitlines():
        if line.startswith("BENCHJSON "):
            return dict(json.loads(line[len("BENCHJSON ") :]))
    raise ValueError(f"no BENCHJSON line in wrk output: {output[-500:]!r}")


def to_result(d: dict[str, float], cpu_s: float, wall_s: float) -> WrkResult:
    dur = d["duration_us"] / 1e6
    errors = int(
        d["connect_errors"]
        + d["read_errors"]
        + d["write_errors"]
        + d["status_errors"]
        + d["timeouts"]
    )
    return WrkResult(
        # only successful answers count as throughput (errors are reported beside it)
        rps=(d["requests"] - d["status_errors"] - d["timeouts"]) / dur if dur else 0.0,
        requests=int(d["requests"]),
        errors=errors,
        p50_ms=d["p50"] / 1e3,
        p90_ms=d["p90"] / 1e3,
        p99_ms=d["p99"] / 1e3,
        mean_ms=d["mean"] / 1e3,
        client_cpu=cpu_s / wall_s if wall_s else 0.0,
        duration_s=dur,
    )


def run_wrk(
    base: str, prefix: Path, connections: int, seconds: float, threads: int = 2, timeout_s: int = 10
) -> WrkResult:
    # the client runs at a slightly higher priority so that its timestamps reflect the server
    argv = [
        "nice",
        "-n",
        "-5",
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{max(1, round(seconds))}s",
        "--timeout",
        f"{timeout_s}s",
        "--latency",
        "-s",
        str(LUA),
        base,
        "--",
        str(prefix),
    ]
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert p.stdout is not None
    out = p.stdout.read().decode(errors="replace")
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"wrk failed ({p.returncode}): {out[-800:]}")
    return to_result(parse_wrk(out), ru.ru_utime + ru.ru_stime, wall)


def read_requests(path: Path) -> list[Req]:
    """Parse one file written by `write_requests` (the inverse; used by probes and tests)."""
    data = Path(path).read_bytes()
    out: list[Req] = []
    i = 0

    def line() -> str:
        nonlocal i
        j = data.index(b"\n", i)
        s = data[i:j].decode()
        i = j + 1
        return s

    while i < len(data):
        method, path_ = line(), line()
        headers = {}
        for _ in range(int(line())):
            k = line()
            headers[k] = line()
        n = int(line())
        body = data[i : i + n]
        i += n + 1
        out.append(Req(method, path_, headers, body))
    return out


def probe(base: str, req: Req) -> tuple[int, bytes]:
    """Send one request (urllib) and return (status, body): each target's answer is checked
    before it is loaded, so a fast error page can never pass for throughput."""
    import urllib.error
    import urllib.request

    r = urllib.request.Request(base + req.path, req.body, req.headers, method=req.method)
    try:
        with urllib.request.urlopen(r, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
