"""The image, for real: deploy/image-smoke.sh builds it with podman from a locally made base image
(scripts/build-image.sh), runs it on loopback and exercises the API; then two containers of it
share sessions through Redis behind nginx. Runs wherever a container runtime is installed (CI
installs podman, buildah, debootstrap and runc through scripts/system-deps.sh; about 2 min on
2 cores); RNNSERVE_IMAGE_SMOKE=0 skips it. The build script's mirror lookup is tested on its own,
against APT source folders made here."""

from __future__ import annotations

import os
import re
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
MIRROR = ROOT / "scripts" / "debian-mirror.sh"
# scripts/build-image.sh's exit when podman's storage has no room for the build's peak: the
# machine's disk, not the image, so the test skips and says how much was free
NO_ROOM = 75


def _no_runtime() -> str | None:
    """Why the image cannot be built here, or None when it can."""
    if os.environ.get("RNNSERVE_IMAGE_SMOKE") == "0":
        return "RNNSERVE_IMAGE_SMOKE=0"
    missing = [t for t in ("podman", "debootstrap", "runc") if which(t) is None]
    if missing:
        return f"no container runtime: {' '.join(missing)} missing (make system-deps, as root)"
    return None


without_runtime = pytest.mark.skipif(_no_runtime() is not None, reason=str(_no_runtime()))


def _dangling() -> set[str]:
    """Unnamed images (before the first build there is no containers.conf yet; listing images
    does not need it)."""
    conf = Path(ENV["CONTAINERS_CONF"]).exists()
    out = subprocess.run(
        ["podman", "images", "-q", "--no-trunc", "--filter", "dangling=true"],
        capture_output=True,
        text=True,
        check=True,
        env=ENV if conf else {k: v for k, v in ENV.items() if k != "CONTAINERS_CONF"},
    ).stdout
    return set(out.split())


@without_runtime
def test_a_disk_without_room_for_the_build_stops_it_before_it_starts(tmp_path: Path) -> None:
    work = tmp_path / "work"  # no base image is made, no containers.conf of the suite's touched
    env = {**ENV, "RNNSERVE_IMG_NEED_MB": str(10**12), "RNNSERVE_IMG_WORK": str(work)}
    r = subprocess.run(
        [str(ROOT / "scripts" / "build-image.sh"), "--gpu", "--tag", "localhost/rnnserve:never"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == NO_ROOM, r.stderr
    assert re.search(r"needs about 1000000000000 MB free in /\S* at its peak, \d+ MB are", r.stderr)
    assert not (work / "rootfs-bookworm").exists()  # stopped before the base image
    assert subprocess.run(
        ["podman", "image", "exists", "localhost/rnnserve:never"], env=ENV
    ).returncode


@pytest.mark.slow
@pytest.mark.timeout(900)
@without_runtime
def test_image_builds_and_serves() -> None:
    before = _dangling()
    r = subprocess.run(
        [str(ROOT / "deploy" / "image-smoke.sh")], capture_output=True, text=True, timeout=880
    )
    if r.returncode == NO_ROOM:
        pytest.skip(r.stderr.strip().splitlines()[-1])
    assert r.returncode == 0, r.stderr[-4000:]
    assert "image-smoke: OK: image" in r.stderr
    # a build leaves no unnamed images behind (the builder and models stages used to stay)
    assert _dangling() <= before


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.redis
@without_runtime
def test_image_replicas_share_sessions_through_redis(tmp_path: Path) -> None:
    """Two containers of the built image (host network, loopback ports) + redis-server + nginx:
    a session alternates between them and an Idempotency-Key replays on the other one."""
    if which("redis-server") is None or which("nginx") is None:
        pytest.skip("needs redis-server and nginx")
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


# -- scripts/debian-mirror.sh: the mirror debootstrap uses, from either APT source format --------

DEB822 = """\
Types: deb
URIs: http://deb.debian.org/debian-security
Suites: trixie-security
Components: main

Types: deb-src
URIs: http://src.example/debian
Suites: trixie

# a disabled stanza
Types: deb
Enabled: no
URIs: http://disabled.example/debian

Types: deb deb-src
# the one: several URIs, the first is not Debian's archive
URIs: https://apt.example.com/tools
 http://mirror.example.org/debian/
Suites: trixie trixie-updates
Components: main
"""


def _lookup(apt: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(MIRROR), str(apt)], capture_output=True, text=True, timeout=30)


def _apt(tmp_path: Path, files: dict[str, str]) -> Path:
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    for name, text in files.items():
        (apt / name).write_text(text)
    return apt


def test_mirror_from_deb822_sources_only(tmp_path: Path) -> None:
    """A current Debian: no sources.list at all (the lookup's grep used to exit 2 here and the
    build script stopped after 0 s with no output)."""
    apt = _apt(tmp_path, {"sources.list.d/debian.sources": DEB822})
    r = _lookup(apt)
    assert (r.returncode, r.stdout, r.stderr) == (0, "http://mirror.example.org/debian/\n", "")


def test_mirror_from_one_line_sources(tmp_path: Path) -> None:
    apt = _apt(
        tmp_path,
        {
            "sources.list": "# deb http://commented.example/debian bookworm main\n"
            "deb-src http://src.example/debian bookworm main\n"
            "deb http://deb.debian.org/debian-security bookworm-security main\n"
            "  deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] "
            "http://ftp.example.de/debian bookworm main\n",
        },
    )
    assert _lookup(apt).stdout == "http://ftp.example.de/debian\n"


def test_mirror_in_apt_order_across_formats(tmp_path: Path) -> None:
    """sources.list first, then sources.list.d/ by name; files APT ignores are ignored."""
    apt = _apt(
        tmp_path,
        {
            "sources.list.d/00-old.list.disabled": "deb http://ignored.example/debian x main\n",
            "sources.list.d/10-a.sources": DEB822,
            "sources.list.d/20-b.list": "deb http://second.example/debian bookworm main\n",
        },
    )
    assert _lookup(apt).stdout == "http://mirror.example.org/debian/\n"
    (apt / "sources.list").write_text("deb http://first.example/debian bookworm main\n")
    assert _lookup(apt).stdout == "http://first.example/debian\n"


@pytest.mark.parametrize(
    "files",
    [
        {},
        {"sources.list.d/ubuntu.sources": "Types: deb\nURIs: http://archive.ubuntu.com/ubuntu\n"},
    ],
    ids=["no-sources", "no-debian-archive"],
)
def test_no_mirror_is_a_message_not_silence(tmp_path: Path, files: dict[str, str]) -> None:
    r = _lookup(_apt(tmp_path, files))
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("debian-mirror: no ") and str(tmp_path) in r.stderr
