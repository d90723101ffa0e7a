"""Server processes: start, wait until ready, CPU time and PSS of the whole process tree, stop."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def cpu_seconds(pids: Sequence[int]) -> float:
    """user + system CPU of live processes (and their reaped children)."""
    total = 0
    for p in pids:
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total / CLK


def cpu_by_name(pids: Sequence[int]) -> dict[str, float]:
    """`cpu_seconds` per kernel process name (/proc/PID/comm): rnnserve names its engine and
    worker processes, so a run can say where the CPU went."""
    out: dict[str, float] = {}
    for p in pids:
        try:
            name = Path(f"/proc/{p}/comm").read_text().strip()
        except OSError:
            continue
        out[name] = out.get(name, 0.0) + cpu_seconds([p])
    return out


def pss_bytes(pids: Sequence[int]) -> int:
    return sum(pss_by_name(pids).values())


def pss_by_name(pids: Sequence[int]) -> dict[str, float]:
    """Proportional set size (bytes) per kernel process name, as `cpu_by_name`."""
    out: dict[str, float] = {}
    for p in pids:
        try:
            name = Path(f"/proc/{p}/comm").read_text().strip()
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    out[name] = out.get(name, 0) + int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return out


def _alive(pid: int) -> bool:
    """A live, non-zombie process (it may vanish between any two reads)."""
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]
    except (OSError, IndexError):
        return False


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return 200 <= r.status < 300
    except Exception:
        return False


@dataclass
class Server:
    name: str
    argv: list[str]
    ready_url: str
    base: str  # http://127.0.0.1:PORT
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    log: Path | None = None
    stop_argv: list[str] | None = None  # e.g. `torchserve --stop`
    proc: subprocess.Popen[bytes] | None = None
    startup_s: float = float("nan")

    def start(self, timeout: float = 120.0) -> float:
        """Start and poll the ready URL; returns seconds from spawn to ready."""
        if self.log:  # (a fresh checkout has no bench/.out/logs yet)
            self.log.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "wb") if self.log else subprocess.DEVNULL  # noqa: SIM115
        env = {**os.environ, **self.env}
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            self.argv,
            env=env,
            cwd=self.cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        while time.perf_counter() - t0 < timeout:
            if http_ok(self.ready_url, 0.5):
                self.startup_s = time.perf_counter() - t0
                return self.startup_s
            if self.proc.poll() is not None and self.stop_argv is None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); see {self.log}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout}s; see {self.log}")

    def pids(self) -> list[int]:
        if self.proc is None:
            return []
        pids = tree(self.proc.pid)
        if self.stop_argv is not None:  # a daemonising server (TorchServe): find by session
            sid = os.getsid(self.proc.pid) if self.proc.poll() is None else self.proc.pid
            for d in os.listdir("/proc"):
                if d.isdigit():
                    with contextlib.suppress(OSError):
                        if os.getsid(int(d)) == sid and int(d) not in pids:
                            pids.append(int(d))
        return pids

    def cpu(self) -> float:
        return cpu_seconds(self.pids())

    def pss(self) -> int:
        return pss_bytes(self.pids())

    def wait_idle(self, below: float = 0.05, timeout: float = 30.0) -> float:
        """Wait until the server tree uses < `below` cores over 0.5 s (work left over from a
        previous run, e.g. streams whose client left, must not steal the next run's CPU)."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            c0 = self.cpu()
            time.sleep(0.5)
            if self.cpu() - c0 < below * 0.5:
                break
        return time.perf_counter() - t0

    def stop(self) -> None:
        if self.proc is None:
            return
        pids = self.pids()
        if self.stop_argv is not None:
            subprocess.run(
                self.stop_argv,
                env={**os.environ, **self.env},
                cwd=self.cwd,
                capture_output=True,
                timeout=60,
            )
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        deadline = time.time() + 15
        while time.time() < deadline and any(_alive(p) for p in pids):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(0.1)
            pids = [p for p in pids if _alive(p)]
        for p in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self.proc = None
