from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_service_never_imports_torch_or_training() -> None:
    code = (
        "import sys, service.app, service.server\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'training'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_no_torch_or_training_import_statements() -> None:
    for path in (ROOT / "service").rglob("*.py"):
        for line in path.read_text().splitlines():
            words = line.split()
            if words[:1] in (["import"], ["from"]) and len(words) > 1:
                assert words[1].split(".")[0] not in ("torch", "training"), f"{path}: {line}"
