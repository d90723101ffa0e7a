"""The image, for real: deploy/image-smoke.sh builds it with podman from a locally made base image,
runs it on loopback and exercises the API; then two containers of it share sessions through Redis
behind nginx. Heavy (a full image build on shared CPUs), so it runs only when asked:
RNNSERVE_IMAGE_SMOKE=1 (and podman is installed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.deploy.cluster import FIXTURE_MODELS, ROOT, Nginx, which
from tests.loopback import RedisProcess, free_port, wait_until

# podman needs runc and this machine's ulimits (scripts/build-image.sh writes this file)
ENV = {
    **os.environ,
    "CONTAINERS_CONF": os.environ.get(
        "CONTAINERS_CONF",
        os.path.join(os.environ.get("RNNSERVE_IMG_WORK", "/tmp/rnnserve-img"), "containers.conf"),
    ),
}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.mark.skipif(
    os.environ.get("RNNSERVE_IMAGE_SMOKE") != "1", reason="set RNNSERVE_IMAGE_SMOKE=1 to build"
)
def test_image_builds_and_serves() -> None:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (scripts/build-image.sh installs it as root)")
    r = subprocess.run(
        [str(ROOT / "deploy" / "image-smoke.sh")], capture_output=True, text=True, timeout=880
    )
    assert r.returncode == 0, r.stderr[-4000:]
    assert "image-smoke: OK: image" in r.stderr


@pytest.mark.redis
@pytest.mark.skipif(
    os.environ.get("RNNSERVE_IMAGE_SMOKE") != "1", reason="set RNNSERVE_IMAGE_SMOKE=1 to build"
)
def test_image_replicas_share_sessions_through_redis(tmp_path: Path) -> None:
    """Two containers of the built image (host network, loopback ports) + redis-server + nginx:
    a session alternates between them and an Idempotency-Key replays on the other one."""
    if shutil.which("podman") is None or which("redis-server") is None or which("nginx") is None:
        pytest.skip("needs podman, redis-server and nginx")
    image = "localhost/rnnserve:latest"
    if subprocess.run(["podman", "image", "exists", image], env=ENV).returncode != 0:
        pytest.skip(f"{image} not built (test_image_builds_and_serves builds it)")
    redis = RedisProcess(tmp_path, which("redis-server") or "")
    redis.start()
    ports, names = [free_port(), free_port()], []
    nginx: Nginx | None = None
    try:
        for i, port in enumerate(ports):
            name = f"rnnserve-pytest-{os.getpid()}-{i}"
            subprocess.run(
                [
                    "podman",
                    "run",
                    "-d",
                    "--name",
                    name,
                    "--network",
                    "host",
                    "--read-only",
                    "--tmpfs",
                    "/tmp",
                    "--health-interval",
                    "disable",
                    "-v",
                    f"{FIXTURE_MODELS}:/app/models:ro",
                    "-e",
                    "RNNSERVE_STORE=redis",
                    "-e",
                    f"RNNSERVE_REDIS_URL={redis.url}",
                    "-e",
                    "RNNSERVE_HOST=127.0.0.1",
                    image,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                check=True,
                capture_output=True,
                env=ENV,
            )
            names.append(name)
        for port in ports:
            wait_until(
                lambda port=port: httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200,
                90,
                f"container on {port}",
            )
        nginx = Nginx(which("nginx") or "", tmp_path, [f"127.0.0.1:{p}" for p in ports])
        nginx.start()
        with httpx.Client(base_url=nginx.url, timeout=30) as c:
            r = c.post("/v1/sessions", json={"model": "tiny-char-lstm"})
            sid = r.json()["session_id"]
            served = set()
            for i, chunk in enumerate(["Once ", "upon ", "a ", "time"]):
                r = c.post(f"/v1/sessions/{sid}/feed", json={"text": chunk})
                assert r.json()["version"] == i + 1, r.text
                served.add(r.headers["x-upstream"])
            assert len(served) == 2
            body, key = {"max_tokens": 20, "temperature": 0}, {"Idempotency-Key": "img-1"}
            first = c.post(f"/v1/sessions/{sid}/generate", json=body, headers=key)
            again = c.post(f"/v1/sessions/{sid}/generate", json=body, headers=key)
            assert first.headers["x-upstream"] != again.headers["x-upstream"]
            assert first.json()["version"] == 5 and again.json()["replayed"] is True
            assert again.json()["text"] == first.json()["text"]
            assert c.get(f"/v1/sessions/{sid}").json()["version"] == 5
    finally:
        if nginx is not None:
            nginx.stop()
        for name in names:
            subprocess.run(["podman", "rm", "-f", "-t", "5", name], capture_output=True, env=ENV)
        redis.stop()
