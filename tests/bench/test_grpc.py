"""bench/grpc.py at smoke size, without PyTriton: rnnserve's session step over HTTP, unary gRPC
and a gRPC stream per client, in one run on the fixture char model; every row has answers and
no errors, and the JSON and the Markdown table say so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import grpc
from tests.conftest import FIXTURE_MODELS


@pytest.mark.timeout(120)
def test_session_steps_over_http_unary_grpc_and_streams(tmp_path: Path) -> None:
    out = tmp_path / "grpc.json"
    args = ["--no-peers", "--rounds", "1", "--seconds", "1", "--warm", "0.5", "--clients", "4"]
    args += ["--model", str(FIXTURE_MODELS / "tiny-char-lstm"), "--out", str(out)]
    assert grpc.main(args) == 0
    r = json.loads(out.read_text())
    assert set(r["targets"]) == set(grpc.OURS)  # each probed right, so each was measured
    for t, s in r["targets"].items():
        assert s["rps"] > 50 and s["errors"] == 0, (t, s)
        assert 0 < s["p50_ms"] <= s["p99_ms"] < 1000, (t, s)
        assert s["server_cpu"] > 0 and s["server_us_per_step"] > 0, (t, s)
    assert r["targets"]["rnnserve-grpc-stream"]["x_rnnserve-http"] > 0
    md = out.with_suffix(".md").read_text()
    assert r["machine"]["cores"] and "| rnnserve-grpc-stream |" in md and "machine:" in md
