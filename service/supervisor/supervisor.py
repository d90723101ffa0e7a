"""`--workers N`: one engine process and N API worker processes, supervised.

    supervisor (this process) ── binds the port, starts and watches the others
      ├─ engine process     models, schedulers, sampling, every session rule, the store;
      │                     serves its ZeroMQ ROUTER socket (service/transport/host.py)
      └─ worker × N         uvicorn + the FastAPI app on the shared listening socket; HTTP,
                            validation, tokenization, JSON/SSE/WebSocket framing; no session
                            state; each reaches the engine through a RemoteClient (DEALER)

Supervision: a worker that dies (even SIGKILL) is replaced at once while the others keep serving;
the engine is told, and cancels that worker's calls (nothing they held stays locked, nothing is
committed). If the engine dies the server exits non-zero at once, so that a supervisor or
Kubernetes restarts it (with the Redis store no session is lost). SIGTERM/SIGINT drain: the
workers finish their requests (uvicorn's graceful shutdown), then the engine closes.

Metrics: every process writes prometheus-client's multiprocess files under one folder, and
`/metrics` (in any worker) sums them: requests from the workers, engine figures from the engine,
each counted once.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from multiprocessing import forkserver
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from service.api.http_server import url_of
from service.logging import configure_logging, get_logger
from service.settings import Settings
from service.supervisor.control import ENGINE_GONE_SIGNAL, Forget, Stop
from service.supervisor.engine_process import engine_main
from service.supervisor.worker_process import worker_main

log = get_logger("supervisor")
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"


# -- the supervisor ----------------------------------------------------------------------------


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # forkserver: one server process imports the service once (after the metrics folder is
        # in the environment), and every engine and worker process is forked from it: start-up
        # does not pay each process's imports, and the processes share those pages (PSS)
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(["service.app", "service.transport.host", "uvicorn"])
        self.dir = Path(tempfile.mkdtemp(prefix="rnnserve-"))
        self.address = f"ipc://{self.dir / 'engine.sock'}"
        self.workers: list[BaseProcess] = []
        self.stopping = False
        self.dump = settings.model_dump()

    def run(self) -> int:
        metrics_dir = self.dir / "metrics"
        metrics_dir.mkdir()
        os.environ[METRICS_ENV] = str(metrics_dir)  # inherited by every child
        # A stop signal is often sent to the whole process group (systemd's default KillMode,
        # `timeout`; Ctrl-C sends SIGINT to it), not to this process alone. The fork server
        # died of a SIGTERM, and with it gone the engine reads as dead (multiprocessing
        # reports exit code 255): the server exited 1 at once instead of draining. So the fork
        # server and the resource tracker start with both signals ignored (inherited by every
        # process forked from them); the workers' uvicorn and the engine set their own
        # handlers, and the supervisor decides the order of the shutdown, as for a signal to it.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        forkserver.ensure_running()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        try:
            return self._run()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        log.info("shutting down", extra={"signal": signal.Signals(signum).name})
        self.stopping = True

    def _run(self) -> int:
        s = self.settings
        parent, child = self.ctx.Pipe()
        engine = self.ctx.Process(
            target=engine_main, args=(self.dump, self.address, child), name="rnnserve-engine"
        )
        t0 = time.monotonic()
        sock = _bind(s.host, s.port)  # a port in use fails here, before anything started
        engine.start()
        child.close()
        # the workers start with the engine (their imports overlap its model loading); each
        # connects at once and waits for the engine's answer before it accepts connections
        self.workers = [self._spawn(sock) for _ in range(s.workers)]
        while not parent.poll(0.05):
            if not engine.is_alive() or self.stopping:
                log.error("engine did not start", extra={"exitcode": engine.exitcode})
                engine.terminate()
                self.stopping = True
                break
        if self.stopping:
            self._stop_workers()
            sock.close()
            return 1
        parent.recv()
        log.info("engine ready", extra={"pid": engine.pid, "s": round(time.monotonic() - t0, 2)})
        url = url_of(sock)  # once, here: every worker serves this one socket
        log.info("listening on %s", url, extra={"url": url, "workers": s.workers})
        if s.grpc_port is not None:  # each worker binds it (SO_REUSEPORT): named once, here
            log.info("grpc on port %d", s.grpc_port, extra={"grpc_port": s.grpc_port})
        code = 0
        while not self.stopping:
            time.sleep(0.1)
            if not engine.is_alive():
                log.error("engine died; stopping", extra={"exitcode": engine.exitcode})
                code = 1
                break
            for i, w in enumerate(self.workers):
                if not w.is_alive() and not self.stopping:
                    log.warning(
                        "worker died; replacing it", extra={"pid": w.pid, "exitcode": w.exitcode}
                    )
                    _mark_dead(w.pid)
                    if w.pid is not None:  # (a started process always has one)
                        with contextlib.suppress(OSError):
                            parent.send(Forget(w.pid))
                    self.workers[i] = self._spawn(sock)
        if not engine.is_alive():  # (also when it died while the server was already stopping)
            # the workers' waiting calls and streams fail at once (503), so their drain below
            # ends as soon as those answers are written, not after the drain timeout
            for w in self.workers:
                if w.is_alive() and w.pid is not None:
                    with contextlib.suppress(OSError):
                        os.kill(w.pid, ENGINE_GONE_SIGNAL)
        # drain: the workers finish their requests, then the engine closes
        self._stop_workers()
        if engine.is_alive():
            with contextlib.suppress(OSError):
                parent.send(Stop())
            engine.join(s.shutdown_timeout_s + 5)
            if engine.is_alive():
                engine.kill()
                engine.join()
        sock.close()
        return code

    def _stop_workers(self) -> None:
        for w in self.workers:
            if w.is_alive() and w.pid is not None:
                os.kill(w.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_timeout_s + 5
        for w in self.workers:
            w.join(max(0.1, deadline - time.monotonic()))
            if w.is_alive():
                w.kill()
                w.join()

    def _spawn(self, sock: socket.socket) -> BaseProcess:
        w = self.ctx.Process(
            target=worker_main, args=(self.dump, sock, self.address), name="rnnserve-worker"
        )
        w.start()
        return w


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _mark_dead(pid: int | None) -> None:
    if pid is None:
        return
    from prometheus_client import multiprocess

    with contextlib.suppress(Exception):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def serve_workers(settings: Settings) -> None:
    configure_logging(settings.log_level, settings.log_json)
    code = Supervisor(settings).run()
    sys.exit(code)
