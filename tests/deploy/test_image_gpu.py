"""The GPU image (deploy/Dockerfile.gpu), built here with podman from Debian and the CUDA / cuDNN
wheels that onnxruntime-gpu names, on a machine with no GPU: every library the CUDA provider
needs is in it except the host's driver; the provider library loads once a driver is there (a
stand-in exporting the driver functions the provider imports: the seam the NVIDIA container
toolkit fills with the real one); and with no GPU visible the image still serves, on the CPU.
About 90 s on 2 cores (the image is 2.9 GB; the build needs 10.5 GB of disk at its peak); RNNSERVE_IMAGE_SMOKE=0 skips it, as it does the
CPU image's test. What needs a real GPU is bench/gpu_check.py's."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.deploy.cluster import FIXTURE_MODELS, ROOT, which
from tests.deploy.test_image import ENV, NO_ROOM, _no_runtime
from tests.loopback import free_port, wait_until

TAG = "localhost/rnnserve:gpu-pytest"
PROVIDER = (
    "/opt/venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime_providers_cuda.so"
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(_no_runtime() is not None, reason=str(_no_runtime())),
]


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, env=ENV, check=check, timeout=600
    )


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    r = subprocess.run(
        [str(ROOT / "scripts" / "build-image.sh"), "--gpu", "--tag", TAG],
        capture_output=True,
        text=True,
        timeout=880,
    )
    if r.returncode == NO_ROOM:  # the build needs 10.5 GB free at its peak (the image is 2.9 GB)
        pytest.skip(r.stderr.strip().splitlines()[-1])
    assert r.returncode == 0, r.stderr[-4000:]
    yield TAG
    podman("rmi", "-f", TAG, check=False)  # 2.8 GB


def _libs(image: str, *args: str, mounts: tuple[str, ...] = ()) -> tuple[int, dict[str, object]]:
    r = podman(
        "run", "--rm", *mounts, "--entrypoint", "python3", image,
        "-m", "service.engine.cuda_libs", *args, check=False,
    )  # fmt: skip
    return r.returncode, json.loads(r.stdout)


def test_every_cuda_library_but_the_driver_is_in_the_image(image: str) -> None:
    rc, report = _libs(image, "--expect-only-driver-missing")
    assert rc == 0, report
    assert report["missing"] == ["libcuda.so.1"]  # the host's, mounted by the container toolkit
    assert "CUDAExecutionProvider" in report["providers"]  # type: ignore[operator]
    dirs = " ".join(report["library_dirs"])  # type: ignore[arg-type]
    assert "nvidia/cu" in dirs and "nvidia/cudnn" in dirs  # from the wheels, not a CUDA base


def test_the_cuda_provider_loads_once_a_driver_is_there(image: str, tmp_path: Path) -> None:
    if which("gcc") is None or which("nm") is None:
        pytest.skip("needs gcc and nm to build the driver stand-in")
    cid = podman("create", image).stdout.strip()
    try:
        podman("cp", f"{cid}:{PROVIDER}", str(tmp_path / "provider.so"))
    finally:
        podman("rm", cid, check=False)
    undefined = subprocess.run(
        ["nm", "-D", "--undefined-only", str(tmp_path / "provider.so")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # the driver API's functions are cuXxx (the runtime's are cudaXxx, cuBLAS's cublasXxx)
    driver_calls = sorted(set(re.findall(r"\b(cu[A-Z]\w*)\b", undefined)))
    stub = tmp_path / "driver"
    stub.mkdir()
    (stub / "stub.c").write_text("".join(f"int {f}(void) {{ return 1; }}\n" for f in driver_calls))
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(stub / "libcuda.so.1"),
         str(stub / "stub.c")],
        check=True,
    )  # fmt: skip
    mounts = ("-v", f"{stub}:/opt/driver:ro", "-e", "LD_LIBRARY_PATH=/opt/driver")
    rc, report = _libs(image, "--expect-only-driver-missing", "--load", mounts=mounts)
    assert rc == 0 and report["loaded"] is True and report["missing"] == [], report


def test_with_no_gpu_visible_it_serves_on_the_cpu(image: str) -> None:
    port = free_port()
    name = f"rnnserve-gpu-pytest-{port}"
    podman(
        "run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp",
        "--health-interval", "disable", "-p", f"127.0.0.1:{port}:8000",
        "-v", f"{FIXTURE_MODELS}:/app/models:ro", image,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{base}/readyz").status_code == 200, 120, "gpu image")
        r = httpx.post(
            f"{base}/v1/models/tiny-char-lstm/generate",
            json={"prompt": "ROMEO:", "max_tokens": 8, "seed": 1},
            timeout=30,
        )
        assert r.status_code == 200 and len(r.json()["text"]) > 0, r.text
        metrics = httpx.get(f"{base}/metrics").text
        # CUDA asked for (the image's RNNSERVE_PROVIDERS), not there: onnxruntime fell back
        assert re.search(r'rnnserve_model_info\{[^}]*provider="CPUExecutionProvider"', metrics)
    finally:
        podman("rm", "-f", "-t", "5", name, check=False)
