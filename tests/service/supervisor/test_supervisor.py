"""The supervisor of `rnnserve serve --workers N`: how the server ends. A stop signal, sent to
the supervisor or to its whole process group (Ctrl-C in a terminal, systemd's default, `timeout`),
drains what is in flight and exits 0; the engine dying stops the server with exit code 1."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import LONG
from tests.servers import start, stop
from tests.service.conftest import LM
from tests.service.supervisor.conftest import CLUSTER


def test_the_engine_dying_stops_the_server_non_zero(tmp_path: Path) -> None:
    c = start(tmp_path, workers=1, **CLUSTER)
    try:
        workers = c.worker_pids()
        os.kill(c.engine_pid(), signal.SIGKILL)
        assert c.proc.wait(15) == 1
        time.sleep(0.5)
        assert all(not Path(f"/proc/{p}").exists() for p in workers)
    finally:
        stop(c)


def test_a_killed_engine_ends_whats_in_flight_with_503_and_the_server_at_once(
    tmp_path: Path,
) -> None:
    """Issue 32.8: with the default 30 s drain, a SIGKILLed engine left requests hanging and the
    server exiting only after 30.6 s, with 13 tracebacks. The supervisor now tells the workers
    (SIGUSR1): what waits on the engine ends at once with 503 `engine_unavailable`."""
    c = start(tmp_path, workers=1, **{**CLUSTER, "shutdown_timeout_s": "30"})
    try:
        body = {"prompt": "ab", "max_tokens": LONG, "stream": True}
        with (
            httpx.Client(base_url=c.base, timeout=30) as client,
            client.stream("POST", f"/v1/models/{LM}/generate", json=body) as r,
        ):
            lines = r.iter_lines()
            assert any(line.startswith("event: token") for line in lines)
            killed = time.monotonic()
            os.kill(c.engine_pid(), signal.SIGKILL)
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        assert rest[-3:-1] == ["event: error", rest[-2]] and "engine_unavailable" in rest[-2]
        assert c.proc.wait(10) == 1
        assert time.monotonic() - killed < 10  # not after the 30 s drain
        assert "Traceback" not in c.log.read_text()
    finally:
        stop(c)


@pytest.mark.parametrize(
    ("sig", "to_group"),
    [(signal.SIGTERM, False), (signal.SIGTERM, True), (signal.SIGINT, True)],
    ids=["sigterm-supervisor", "sigterm-group", "sigint-group"],
)
def test_a_stop_signal_drains_a_stream_in_flight_and_exits_zero(
    tmp_path: Path, sig: signal.Signals, to_group: bool
) -> None:
    """Before: a SIGTERM to the group killed multiprocessing's fork server too, the engine then
    read as dead (exit code 255), and the server exited 1 at once instead of draining (the
    fork server ignores SIGINT of its own accord)."""
    c = start(tmp_path, workers=1, **CLUSTER)
    try:
        # long enough to be in flight when the signal comes, short enough to end within the
        # drain (RNNSERVE_SHUTDOWN_TIMEOUT_S=5: supervisor/conftest.py CLUSTER): ~0.1 ms a token
        body = {"prompt": "a", "max_tokens": 3000, "stream": True}
        streaming = threading.Event()
        text: list[str] = []

        def read() -> None:
            with httpx.stream("POST", f"{c.base}/v1/models/{LM}/generate", json=body) as r:
                for line in r.iter_lines():
                    if line == "event: token":
                        streaming.set()
                    text.append(line)

        reader = threading.Thread(target=read)
        reader.start()
        assert streaming.wait(10)
        if to_group:
            os.killpg(c.proc.pid, sig)  # its own session and group (tests/servers.py)
        else:
            c.proc.send_signal(sig)
        reader.join(30)
        assert c.proc.wait(30) == 0
        lines = [line for line in text if line]
        assert "event: done" in lines and lines[-1] == "data: [DONE]"
        assert "engine died" not in c.log.read_text()
    finally:
        stop(c)
