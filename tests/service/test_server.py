"""`serve()` as a process: JSON logs, graceful shutdown that drains an in-flight stream."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx

from tests.servers import start, stop
from tests.service.conftest import LM


def test_sigterm_drains_in_flight_stream(tmp_path: Path) -> None:
    server = start(tmp_path, workers=0, log_json=True, shutdown_timeout_s="20")
    try:
        body = {"max_tokens": 800, "stream": True, "temperature": 0}
        url = f"{server.base}/v1/models/{LM}/generate"
        with httpx.stream("POST", url, json=body, timeout=30) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("event: token")
            server.proc.send_signal(signal.SIGTERM)
            rest = [x for x in lines if x]
        assert rest[-1] == "data: [DONE]" and any(x.startswith("event: done") for x in rest)
        assert sum(x.startswith("event: token") for x in rest) >= 700  # it ran to the end
        # a drained stop is a clean exit, as at --workers N (uvicorn raised SIGTERM again on
        # its way out: -15, and `make serve` printed "Terminated")
        assert server.proc.wait(30) == 0
    finally:
        stop(server)
    logs = server.lines()
    assert any(x["msg"] == "model loaded" and x["provider"] for x in logs)
    req = [x for x in logs if x["msg"] == "request"]
    assert req and all("request_id" in x and "body" not in x for x in req)
    assert any(x["msg"] == "stopped" for x in logs)
