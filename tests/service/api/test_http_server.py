"""The server logs the address it really listens on (with port 0 the system picks the port, and
the logged URL is the one that answers), and closes idle kept-alive connections when told."""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import FIXTURE_MODELS, ROOT
from tests.servers import server_process


def test_logs_the_bound_address_even_for_port_zero() -> None:
    env = {**os.environ, "RNNSERVE_MODELS_DIR": str(FIXTURE_MODELS)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rnnserve.cli", "serve", "--host", "127.0.0.1", "--port", "0"],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stderr is not None
    stderr = proc.stderr
    reader = threading.Thread(target=lambda: [lines.put(x) for x in stderr], daemon=True)
    reader.start()
    try:
        listening = None
        while listening is None:
            line = lines.get(timeout=30)  # queue.Empty: no such line within 30 s
            if line.startswith("{") and json.loads(line)["msg"].startswith("listening on "):
                listening = json.loads(line)
        url = listening["url"]
        assert listening["msg"] == f"listening on {url}"
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(30)
    # once, also at --workers N (the suite runs again at 2): every worker serves one socket
    reader.join(10)  # every line the server wrote, to its end
    rest = []
    while not lines.empty():
        rest.append(lines.get())
    said = [x for x in rest if x.startswith("{") and '"listening on ' in x]
    assert said == [], said


def test_an_idle_kept_alive_connection_is_closed_after_the_keep_alive_timeout(
    tmp_path: Path,
) -> None:
    """`RNNSERVE_KEEP_ALIVE_TIMEOUT_S` reaches uvicorn: an idle connection is closed once it has
    passed, never before. 6 s, past uvicorn's own 5 s, so that a setting ignored fails the
    bound (the default's bounds: tests/service/test_settings.py)."""
    with server_process(tmp_path, keep_alive_timeout_s="6") as server:
        host, port = server.addr.split(":")
        with socket.create_connection((host, int(port)), timeout=60) as sock:
            sent = time.monotonic()  # the server's idle clock starts after this
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            while sock.recv(4096):  # to the server's close (socket.timeout: it never closed)
                pass
            assert time.monotonic() - sent >= 6.0
