"""The benchmark harness's plumbing (no timings are asserted: the suite itself is `python -m bench`)."""

from __future__ import annotations

import http.server
import shutil
import threading
from pathlib import Path
from typing import ClassVar

import pytest

from bench import loadgen, report, stats
from bench.genclient import build_request

WRK_OUT = """Running 1s test @ http://127.0.0.1:1
  2 threads and 4 connections
BENCHJSON {"requests":2000,"duration_us":2000000,"bytes":1,"connect_errors":0,"read_errors":1,\
"write_errors":0,"status_errors":2,"timeouts":0,"p50":1500,"p90":2000,"p99":4000,"p999":5000,\
"mean":1600.0,"max":9000}
"""


def test_parse_wrk_and_result() -> None:
    d = loadgen.parse_wrk(WRK_OUT)
    r = loadgen.to_result(d, cpu_s=0.5, wall_s=2.0)
    assert r.rps == pytest.approx(999.0)  # the 2 non-2xx answers are not throughput
    assert r.errors == 3
    assert (r.p50_ms, r.p99_ms) == (1.5, 4.0)
    assert r.client_cpu == pytest.approx(0.25)


def test_parse_wrk_without_summary_fails() -> None:
    with pytest.raises(ValueError, match="BENCHJSON"):
        loadgen.parse_wrk("wrk: connection refused")


def test_requests_round_trip(tmp_path: Path) -> None:
    reqs = [
        loadgen.Req("POST", "/a", {"Content-Type": "application/json"}, b'{"text": "x"}'),
        loadgen.Req(
            "POST",
            "/v2/models/m/infer",
            {"Inference-Header-Content-Length": "3"},
            b"abc\n\x00\xff\n\n",
        ),  # binary bodies may hold newlines
        loadgen.Req("GET", "/b", {}, b""),
    ]
    loadgen.write_requests(tmp_path / "r", [reqs, reqs[:1]])
    assert loadgen.read_requests(tmp_path / "r.0") == reqs
    assert loadgen.read_requests(tmp_path / "r.1") == reqs[:1]


def _run(rps: float, p50: float = 1.0) -> dict[str, float]:
    return {
        "rps": rps,
        "p50_ms": p50,
        "p99_ms": 2 * p50,
        "client_cpu": 0.1,
        "server_cpu": 1.0,
        "errors": 0,
    }


def test_summarize_ratios_are_per_round() -> None:
    # the machine slows down in round 2 for everyone: the same-round ratio stays 3x
    runs = {
        "rnnserve": [_run(300), _run(150), _run(330)],
        "pytriton-bin": [_run(100), _run(50), _run(100)],
        "floor": [_run(100), _run(100), _run(100)],
    }
    s = stats.summarize(runs)
    assert s["rnnserve"]["rps"] == 300
    assert s["rnnserve"]["x_pytriton-bin"] == pytest.approx(3.0)
    assert s["rnnserve"]["x_floor"] == pytest.approx(3.0)
    assert "x_floor" not in s["floor"]
    assert s["pytriton-bin"]["x_floor"] == pytest.approx(1.0)


def test_targets_table_marks_met_and_missed() -> None:
    res = {
        "step": {"targets": {"rnnserve": {"x_pytriton-bin": 3.2}}},
        "footprint": {"rnnserve": {"startup_s": 2.0, "idle_pss_mb": 90.0}},
        "capacity": {"ratio": 1.4},
        "overhead": {"rows": [{"batch": 64, "ratio": 1.2}]},
    }
    table = report.targets_table(res)
    line = {ln.split("|")[1].strip(): ln for ln in table.splitlines()[2:]}
    assert "**met**" in line["session step ≥ 3× PyTriton-binary req/s (32 clients)"]
    assert "**missed**" in line["start-up ≤ 1.5 s"]
    assert "**met**" in line["idle PSS ≤ 150 MB"]
    assert "**met**" in line["memory per idle session ≤ 1.5× raw state bytes"]
    assert "**missed**" in line["engine step ≤ 1.10× raw onnxruntime call at batch 64"]


def test_generation_request_is_http11_with_length() -> None:
    raw = build_request("127.0.0.1", 8000, "/g", {"prompt": "é", "stream": True})
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"POST /g HTTP/1.1\r\n")
    assert f"Content-Length: {len(body)}".encode() in head
    assert b"Connection: close" in head


class _Echo(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


class _Quiet(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # wrk drops its connections mid-response when its time is up


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_wrk_replays_the_request_file(tmp_path: Path) -> None:
    """The Lua script reads our record format and sends exactly those requests."""
    srv = _Quiet(("127.0.0.1", 0), _Echo)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        reqs = [
            loadgen.Req("POST", f"/p{i}", {"Content-Type": "text/plain"}, b"b\n%d" % i)
            for i in range(3)
        ]
        loadgen.write_requests(tmp_path / "r", [reqs])
        res = loadgen.run_wrk(
            f"http://127.0.0.1:{srv.server_port}",
            tmp_path / "r",
            connections=1,
            seconds=1,
            threads=1,
        )
    finally:
        srv.shutdown()
    assert res.requests > 0
    assert res.errors == 0
    assert {p for p, _ in _Echo.seen} <= {"/p0", "/p1", "/p2"}
    assert ("/p1", b"b\n1") in _Echo.seen
