"""A real `rnnserve serve --workers N` for the tests: start it (in its own process group, so a
test may signal the whole group), find its processes, stop it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import FIXTURE_MODELS, LONG, ROOT
from tests.loopback import free_port

BIN = Path(sys.executable).parent


@dataclass
class Cluster:
    proc: subprocess.Popen[bytes]
    base: str
    log: Path

    def lines(self) -> list[dict[str, object]]:
        out = []
        for raw in self.log.read_text(errors="replace").splitlines():
            if raw.startswith("{"):
                try:
                    out.append(json.loads(raw))
                except json.JSONDecodeError:
                    continue
        return out

    def engine_pid(self) -> int:
        return next(int(str(r["pid"])) for r in self.lines() if r.get("msg") == "engine ready")

    def worker_pids(self) -> set[int]:
        """The API workers: forked, like the engine, from multiprocessing's fork server (a child
        of the supervisor, beside its resource tracker)."""

        def kids(pid: int) -> list[int]:
            try:
                return [
                    int(k) for k in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
                ]
            except OSError:
                return []

        engine = self.engine_pid()
        return {w for helper in kids(self.proc.pid) for w in kids(helper) if w != engine}


def start(tmp: Path, workers: int = 2, **settings: str) -> Cluster:
    port = free_port()
    log = tmp / f"cluster-{port}.log"
    env = {
        **os.environ,
        "RNNSERVE_MODELS_DIR": str(FIXTURE_MODELS),
        "RNNSERVE_PORT": str(port),
        "RNNSERVE_HOST": "127.0.0.1",
        "RNNSERVE_LOG_JSON": "true",
        "RNNSERVE_SHUTDOWN_TIMEOUT_S": "5",
        "RNNSERVE_MAX_TOKENS_LIMIT": str(LONG),
        **{f"RNNSERVE_{k.upper()}": v for k, v in settings.items()},
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "rnnserve"), "serve", "--workers", str(workers)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a test may signal all of it
        )
    c = Cluster(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{c.base}/readyz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start:\n{log.read_text()}")
        time.sleep(0.1)
    # both workers up (each answers on the shared socket once its lifespan ran)
    while len(c.worker_pids()) < workers and time.monotonic() < deadline:
        time.sleep(0.1)
    return c


def stop(c: Cluster) -> None:
    if c.proc.poll() is None:
        c.proc.send_signal(signal.SIGTERM)
        try:
            c.proc.wait(30)
        except subprocess.TimeoutExpired:
            c.proc.kill()
            c.proc.wait(5)
