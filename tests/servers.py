"""Every way the tests start a real rnnserve server, in one place:

* `serve_in_thread(app)`: uvicorn on a free loopback port in a thread of this process, for a
  test that drives real protocol clients and looks at the app's state;
* `start(tmp, ...)` / `stop(server)` / `with server_process(tmp, ...)`: the server as its own
  process, as a user runs it (`serve()`, at any `workers` count), for a test that measures it
  (its CPU, memory, connections), signals it or reads its log.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI

from tests.conftest import FIXTURE_MODELS, ROOT
from tests.loopback import free_port


@contextmanager
def serve_in_thread(app: FastAPI) -> Iterator[str]:
    """`host:port` of `app` served by uvicorn in a thread, until the block ends."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_config=None,
        access_log=False,
        lifespan="on",
        ws="websockets-sansio",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


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

    def _named(self, comm: str) -> list[int]:
        """Its processes whose kernel name is `comm` (the supervisor names each role)."""
        out = []
        for pid in self.pids():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == comm:
                    out.append(pid)
        return out

    def engine_pid(self) -> int:
        (pid,) = self._named("rnnserve-engine")
        return pid

    def worker_pids(self) -> set[int]:
        return set(self._named("rnnserve-worker"))

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

    def connections(self, from_ports: Collection[int] | None = None) -> int:
        """Client connections the server holds open: its processes' TCP sockets on its port,
        listening ones excluded (only those from the clients' local `from_ports` when given:
        the server keeps other clients' idle connections 75 s). Only those: a count of every
        socket also moved with the server's own (a worker still connecting to the engine when
        a test began was once counted as a connection left open)."""
        port = int(self.addr.rpartition(":")[2])
        accepted: set[str] = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError):
                for line in Path(table).read_text().splitlines()[1:]:
                    f = line.split()  # sl local remote state ... uid timeout inode
                    if int(f[1].rpartition(":")[2], 16) != port or f[3] == "0A":  # 0A: LISTEN
                        continue
                    if from_ports is None or int(f[2].rpartition(":")[2], 16) in from_ports:
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

    def lines(self) -> list[dict[str, object]]:
        """The log's JSON records (with `log_json=True`)."""
        out = []
        for raw in self.log_text().splitlines():
            if raw.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    out.append(json.loads(raw))
        return out


def start(
    tmp: Path, *, workers: int | None = None, log_json: bool = False, **settings: str
) -> ServerProcess:
    """Start the server on a free port with the fixture models and wait until it is ready (and
    every worker is up). `settings`: `name=value` for `RNNSERVE_NAME` (or the variable's own
    name); `workers` None keeps the environment's (the CI's `RNNSERVE_WORKERS=2` pass). Its
    own session and process group: a test may signal all of it."""
    port = free_port()
    log = tmp / f"server-{port}.log"
    env = {
        **os.environ,
        "RNNSERVE_MODELS_DIR": str(FIXTURE_MODELS),
        "RNNSERVE_HOST": "127.0.0.1",
        "RNNSERVE_PORT": str(port),
        "RNNSERVE_LOG_JSON": "true" if log_json else "false",
        **{
            k if k.startswith("RNNSERVE_") else f"RNNSERVE_{k.upper()}": v
            for k, v in settings.items()
        },
    }
    if workers is not None:
        env["RNNSERVE_WORKERS"] = str(workers)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from service.server import serve; serve()"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 60
    want = int(env.get("RNNSERVE_WORKERS", "0"))
    # one client for every poll: `httpx.get` builds a client per call, ~23 ms of CPU each (its
    # SSL context), taken from the server starting beside it
    with httpx.Client(timeout=1) as http:
        while True:
            with contextlib.suppress(httpx.TransportError):
                ready = http.get(f"{server.base}/readyz").status_code == 200
                if ready and len(server.worker_pids()) >= want:  # each worker answers once up
                    return server
            if time.monotonic() > deadline or proc.poll() is not None:
                stop(server)
                raise RuntimeError(f"the server did not start:\n{server.log_text()}")
            time.sleep(0.05)


def stop(server: ServerProcess, sig: int = signal.SIGTERM, wait: float = 30) -> None:
    """Send `sig` and reap; a server that does not stop is killed, so no test leaves one."""
    if server.proc.poll() is not None:
        return
    server.proc.send_signal(sig)
    try:
        server.proc.wait(wait)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait(5)


@contextmanager
def server_process(
    tmp: Path, *, workers: int | None = None, log_json: bool = False, **settings: str
) -> Iterator[ServerProcess]:
    server = start(tmp, workers=workers, log_json=log_json, **settings)
    try:
        yield server
    finally:
        stop(server)
