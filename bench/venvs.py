"""Peer virtual environments: each peer is installed from PyPI into its own venv under
`bench/.venvs/<peer>` (gitignored), never into the project's venv. Idempotent: a venv whose
`requirements.txt` matches the spec and whose `.ok` marker exists is reused."""

from __future__ import annotations

import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENVS = ROOT / ".venvs"
# the project's own onnxruntime (the suite runs in the project's venv): every peer runs the same
# kernels, whatever version the project's install resolved to
ORT = f"onnxruntime=={version('onnxruntime')}"

SPECS: dict[str, list[str]] = {
    "pytriton": ["nvidia-pytriton==0.7.*", ORT, "numpy", "pydantic>=2"],
    "torchserve": [
        "torchserve==0.12.*",
        "torch-model-archiver==0.12.*",
        "torch==2.13.0",  # TorchServe imports torch; the CPU wheel lies on this machine's disk
        "pyyaml",
        "pydantic>=2",
        ORT,
        "numpy",
    ],
    "mlserver": ["mlserver==1.7.*", "uvloop<0.22", ORT, "numpy"],
    "bentoml": ["bentoml==1.4.*", ORT, "numpy"],
    # not a peer: rnnserve's own serving install, only to measure its install size the same way
    "rnnserve": [f"{ROOT.parent}[serve]"],
}


def python(peer: str) -> Path:
    return VENVS / peer / "bin" / "python"


def ensure(peer: str, log: Path | None = None) -> Path:
    """Create/update the venv of `peer`; return its python. Raises on a failed install."""
    spec = SPECS[peer]
    venv = VENVS / peer
    req = venv / "requirements.txt"
    ok = venv / ".ok"
    want = "\n".join(spec) + "\n"
    if ok.exists() and req.exists() and req.read_text() == want:
        return python(peer)
    VENVS.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    out = open(log, "ab") if log else None  # noqa: SIM115
    try:
        if not python(peer).exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        req.write_text(want)
        subprocess.run(
            [
                str(python(peer)),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "-r",
                str(req),
            ],
            check=True,
            stdout=out,
            stderr=out,
        )
    finally:
        if out:
            out.close()
    ok.write_text(f"{time.time() - t0:.1f}s\n")
    return python(peer)


def size_mb(peer: str) -> float:
    """Disk size of the venv (a proxy for the image layer the framework needs)."""
    total = sum(
        f.stat().st_size for f in (VENVS / peer).rglob("*") if f.is_file() and not f.is_symlink()
    )
    return total / 2**20


def versions(peer: str) -> dict[str, str]:
    """Installed versions of the peer's top-level packages (for the report)."""
    names = [s.split("=")[0].split("<")[0].split(">")[0] for s in SPECS[peer]]
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except Exception: pass\n"
        "print(json.dumps(out))"
    )
    import json

    r = subprocess.run([str(python(peer)), "-c", code, *names], capture_output=True, text=True)
    return dict(json.loads(r.stdout)) if r.returncode == 0 else {}


if __name__ == "__main__":
    for p in sys.argv[1:] or list(SPECS):
        print(p, ensure(p, ROOT / ".out" / f"install-{p}.log"), flush=True)
