"""`rnnserve` as a real server process on a free port, for the tests that measure what a hostile
client costs it (its RSS, its other clients' latency) and read its log."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import FIXTURE_MODELS, ROOT
from tests.loopback import free_port, stop_process


@dataclass(frozen=True)
class ServerProcess:
    proc: subprocess.Popen[bytes]
    base: str  # http://127.0.0.1:port
    log: Path  # stdout and stderr together

    @property
    def addr(self) -> str:
        return self.base.removeprefix("http://")

    def pids(self) -> list[int]:
        """The server and every process under it (`--workers N`: the supervisor, the engine and
        the workers), so what a test measures is the whole server at any worker count."""
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):  # gone while we look
                # "pid (comm) state ppid ...": comm may hold spaces, so split after its ")"
                ppid = int(stat.read_text().rpartition(")")[2].split()[1])
                children.setdefault(ppid, []).append(int(stat.parent.name))
        tree, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(children.get(pid, []))
        return tree

    def rss_mb(self) -> float:
        """The resident memory of the whole server (every process in `pids`)."""
        kb = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        kb += int(line.split()[1])
        return kb / 1024

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the whole server has used so far: what a request cost
        it, unlike wall time, does not grow when the machine is shared."""
        ticks = 0
        for pid in self.pids():
            with contextlib.suppress(OSError, IndexError, ValueError):
                # after the ")" that ends comm: state is field 3, utime 14 and stime 15
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def connections(self) -> int:
        """Client connections the server holds open: its processes' TCP sockets on its port,
        listening ones excluded. Only those: a count of every socket also moved with the
        server's own (a worker still connecting to the engine when a test began was once
        counted as a connection left open)."""
        port = int(self.addr.rpartition(":")[2])
        accepted: set[str] = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError):
                for line in Path(table).read_text().splitlines()[1:]:
                    f = line.split()  # sl local remote state ... uid timeout inode
                    if int(f[1].rpartition(":")[2], 16) == port and f[3] != "0A":  # 0A: LISTEN
                        accepted.add(f"socket:[{f[9]}]")
        n = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for fd in Path(f"/proc/{pid}/fd").iterdir():
                    with contextlib.suppress(OSError):  # closed while we look
                        n += os.readlink(fd) in accepted
        return n

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def server_process(tmp: Path, **env: str) -> Iterator[ServerProcess]:
    """`env`: RNNSERVE_* settings over the defaults (fixture models, plain-text logs)."""
    port = free_port()
    log = tmp / f"server-{port}.log"
    full = {
        **os.environ,
        "RNNSERVE_MODELS_DIR": str(FIXTURE_MODELS),
        "RNNSERVE_PORT": str(port),
        "RNNSERVE_LOG_JSON": "false",
        **env,
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from service.server import serve; serve()"],
            cwd=ROOT,
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{server.base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"server did not start:\n{server.log_text()}")
            time.sleep(0.05)
        yield server
    finally:
        stop_process(proc)
