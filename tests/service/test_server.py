"""`serve()` as a process: JSON logs, graceful shutdown that drains an in-flight stream."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx

from tests.conftest import FIXTURE_MODELS, ROOT
from tests.service.conftest import LM


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_sigterm_drains_in_flight_stream() -> None:
    port = _free_port()
    env = {
        **os.environ,
        "RNNSERVE_MODELS_DIR": str(FIXTURE_MODELS),
        "RNNSERVE_PORT": str(port),
        "RNNSERVE_SHUTDOWN_TIMEOUT_S": "20",
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", "from service.server import serve; serve()"],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "server did not start"
            time.sleep(0.05)
        body = {"max_tokens": 800, "stream": True, "temperature": 0}
        with httpx.stream("POST", f"{base}/v1/models/{LM}/generate", json=body, timeout=30) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("event: token")
            proc.send_signal(signal.SIGTERM)
            rest = [x for x in lines if x]
        assert rest[-1] == "data: [DONE]" and any(x.startswith("event: done") for x in rest)
        assert sum(x.startswith("event: token") for x in rest) >= 700  # it ran to the end
        # a drained stop is a clean exit, as at --workers N (uvicorn raised SIGTERM again on
        # its way out: -15, and `make serve` printed "Terminated")
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=10)
    logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(x["msg"] == "model loaded" and x["provider"] for x in logs)
    req = [x for x in logs if x["msg"] == "request"]
    assert req and all("request_id" in x and "body" not in x for x in req)
    assert any(x["msg"] == "stopped" for x in logs)
