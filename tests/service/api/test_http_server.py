"""The server logs the address it really listens on: with port 0 the system picks the port, and
the logged URL is the one that answers."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading

import httpx

from tests.conftest import FIXTURE_MODELS, ROOT


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
