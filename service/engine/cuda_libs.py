"""The CUDA provider's shared libraries, when they come from PyPI wheels (`onnxruntime-gpu[cuda,
cudnn]`: the GPU image, deploy/Dockerfile.gpu) rather than a CUDA installation.

The wheels put libcudart, cuBLAS, cuFFT, cuRAND and cuDNN under `site-packages/nvidia/*/lib`,
where the dynamic linker does not look: onnxruntime's `preload_dlls()` loads them into the
process before the first CUDA session. Only the driver (`libcuda.so.1`) must come from the host
(the NVIDIA container toolkit mounts it). `python -m service.engine.cuda_libs` says what the
provider library needs and what is missing; the image build runs it, so an image whose CUDA
libraries cannot load is never produced.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import onnxruntime as ort

DRIVER = "libcuda.so.1"  # the host's, never in an image


def provider_library() -> Path | None:
    """onnxruntime's CUDA provider library, where this onnxruntime build has one."""
    lib = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    return lib if lib.is_file() else None


def wheel_library_dirs() -> list[Path]:
    """The `lib` folders of the nvidia-* wheels installed beside onnxruntime."""
    nvidia = Path(ort.__file__).parent.parent / "nvidia"
    return sorted(p for p in nvidia.glob("*/lib") if p.is_dir())


@cache
def preload() -> bool:
    """Load the wheels' CUDA and cuDNN libraries into this process, once (before the first CUDA
    session is made). False where this onnxruntime cannot (a CPU build, or one before 1.21)."""
    fn = getattr(ort, "preload_dlls", None)
    if fn is None or provider_library() is None:
        return False
    fn()
    return True


def missing_libraries(lib: Path) -> list[str]:
    """What the dynamic linker cannot find for `lib` (by `ldd`), looking in the wheels' folders
    as well as the system's: the libraries `preload()` cannot supply."""
    env = dict(os.environ)
    dirs = [str(d) for d in wheel_library_dirs()]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*dirs, env.get("LD_LIBRARY_PATH", "")]).rstrip(
        os.pathsep
    )
    out = subprocess.run(
        ["ldd", str(lib)], env=env, capture_output=True, text=True, check=True
    ).stdout
    return sorted(line.split("=>")[0].strip() for line in out.splitlines() if "not found" in line)


def load_provider() -> None:
    """`preload()`, then load the provider library as onnxruntime will: raises OSError naming
    the first library that cannot be loaded."""
    lib = provider_library()
    if lib is None:
        raise OSError("this onnxruntime build has no CUDA provider library")
    preload()
    ctypes.CDLL(str(lib), mode=os.RTLD_LAZY)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m service.engine.cuda_libs", description=__doc__)
    p.add_argument(
        "--expect-only-driver-missing",
        action="store_true",
        help=f"exit 1 unless every library but the host's driver ({DRIVER}) is found",
    )
    p.add_argument("--load", action="store_true", help="also load the provider library")
    args = p.parse_args(argv)
    lib = provider_library()
    report: dict[str, object] = {
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "provider_library": str(lib) if lib else None,
        "library_dirs": [str(d) for d in wheel_library_dirs()],
    }
    missing = missing_libraries(lib) if lib else []
    report["missing"] = missing
    ok = lib is not None
    if args.expect_only_driver_missing:
        ok = ok and set(missing) <= {DRIVER}
    if args.load and ok:
        try:
            load_provider()
            report["loaded"] = True
        except OSError as e:
            report["loaded"], report["error"] = False, str(e)
            ok = False
    print(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
