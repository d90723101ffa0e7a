"""A scale-out deployment on one machine: redis-server, N `rnnserve serve` replicas and an nginx
round-robin load balancer, every one a subprocess bound to 127.0.0.1 on a free port.

Used by the multi-replica test; every start waits with a deadline and `close()` always reaps.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from tests.loopback import RedisProcess, free_port, stop_process, wait_until
from tests.redis_cluster import RedisCluster

ROOT = Path(__file__).resolve().parents[2]
FIXTURE_MODELS = ROOT / "tests" / "fixtures" / "models"


def which(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if Path(p).exists()), None
    )


class Replica:
    def __init__(self, index: int, redis_url: str, workdir: Path, env: dict[str, str]) -> None:
        self.index, self.port = index, free_port()
        self.log = workdir / f"replica-{index}.log"
        self.env = {
            **os.environ,
            "RNNSERVE_STORE": "redis",
            "RNNSERVE_REDIS_URL": redis_url,
            "RNNSERVE_MODELS_DIR": str(FIXTURE_MODELS),
            "RNNSERVE_HOST": "127.0.0.1",
            "RNNSERVE_PORT": str(self.port),
            "RNNSERVE_INTRA_OP_THREADS": "1",
            "RNNSERVE_SHUTDOWN_TIMEOUT_S": "5",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rnnserve.cli", "serve"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"replica {self.index} exited; see {self.log}")
        return httpx.get(f"http://{self.addr}/readyz", timeout=1).status_code == 200

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {dir}/nginx-access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream rnnserve {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://rnnserve;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 60s;
            proxy_next_upstream error timeout;
            add_header X-Upstream $upstream_addr always;
        }}
    }}
}}
"""


class Nginx:
    def __init__(self, binary: str, workdir: Path, upstreams: list[str]) -> None:
        self.binary, self.dir, self.port = binary, workdir, free_port()
        servers = "\n".join(f"        server {u} max_fails=1 fail_timeout=2s;" for u in upstreams)
        self.conf = workdir / "nginx.conf"
        self.conf.write_text(NGINX_CONF.format(dir=workdir, servers=servers, port=self.port))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "-p", str(self.dir), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited; see {self.dir}/nginx-error.log")
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.3):
                return True

        wait_until(up, 15, "nginx")

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGQUIT)
        self.proc = None


class Cluster:
    """`redis_cluster`: the store is a Redis Cluster of 3 primaries with a replica each
    (`tests/redis_cluster.py`) instead of one redis-server."""

    def __init__(
        self,
        workdir: Path,
        replicas: int = 3,
        env: dict[str, str] | None = None,
        redis_cluster: bool = False,
    ) -> None:
        redis_bin, nginx_bin = which("redis-server"), which("nginx")
        if redis_bin is None or nginx_bin is None:
            raise FileNotFoundError("redis-server and nginx are needed (scripts/system-deps.sh)")
        self.redis: RedisProcess | RedisCluster = (
            RedisCluster(workdir / "redis") if redis_cluster else RedisProcess(workdir, redis_bin)
        )
        env = {**(env or {}), "RNNSERVE_REDIS_CLUSTER": "true" if redis_cluster else "false"}
        self.replicas = [Replica(i, self.redis.url, workdir, env) for i in range(replicas)]
        self.nginx = Nginx(nginx_bin, workdir, [r.addr for r in self.replicas])

    def start(self) -> None:
        try:
            self.redis.start()
            for r in self.replicas:
                r.start()
            for r in self.replicas:
                wait_until(r.ready, 90, f"replica {r.index}")
            self.nginx.start()
        except BaseException:
            self.close()
            raise

    def replica_at(self, addr: str) -> Replica:
        return next(r for r in self.replicas if r.addr == addr)

    def close(self) -> None:
        self.nginx.stop()
        for r in self.replicas:
            r.stop()
        self.redis.stop()
