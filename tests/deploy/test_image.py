"""The image smoke test (deploy/image-smoke.sh): builds the image with podman from a locally made
base image, runs it on loopback and exercises the API. Heavy (a full image build on shared CPUs),
so it runs only when asked: RNNSERVE_IMAGE_SMOKE=1 (and podman is installed)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.deploy.cluster import ROOT

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
