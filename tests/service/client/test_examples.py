"""The examples in examples/ run as written against a live server (fixture models)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from service.app import create_app
from service.engine.registry import Registry
from service.settings import Settings
from tests.conftest import FIXTURE_MODELS, ROOT
from tests.servers import serve_in_thread
from tests.service.conftest import CLASSIFIERS, LM


@pytest.fixture(scope="module")
def url(registry: Registry) -> Iterator[str]:
    app = create_app(Settings(models_dir=FIXTURE_MODELS), registry=registry, configure_logs=False)
    with serve_in_thread(app) as addr:
        yield f"http://{addr}"


@pytest.mark.parametrize(
    ("script", "args", "says"),
    [
        ("quickstart.py", ["--lm", LM, "--classifier", CLASSIFIERS[1]], "refused as expected"),
        ("async_concurrent.py", ["--lm", LM, "-n", "4"], "4 streams of 80 tokens"),
        ("resume_session.py", ["--lm", LM], "exactly what the original did"),
    ],
)
def test_example_runs(url: str, script: str, args: list[str], says: str) -> None:
    cmd = [sys.executable, str(ROOT / "examples" / script), "--url", url, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert says in done.stdout, done.stdout
