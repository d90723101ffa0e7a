"""Every code example in README.md and docs/ runs, as written, against a live server: the one the
file's `serve` block starts (or a server on the shipped models), on a free port. Seeded answers
and `output` blocks shown in the docs must be what the server prints (`tests/docs/examples.py`
has the conventions), so a doc cannot drift from the server again."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT
from tests.docs.examples import (
    SETUPS,
    Example,
    answers_found,
    expected_answers,
    matches,
    output_pattern,
    parse,
    printed_json,
)
from tests.loopback import free_port

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLES = [ex for path in DOCS for ex in parse(path)]
RUN = [ex for ex in EXAMPLES if ex.skip is None and "serve" not in ex.options]
BIN = Path(sys.executable).parent

# every curl in a bash example fails the example on an HTTP error, as a user would notice
BASH_PRELUDE = """set -euo pipefail
curl() { command curl --fail-with-body --max-time 60 "$@"; }
"""

Start = Callable[[Path], str]


GRPC: dict[str, str] = {}  # a docs server's base URL -> its gRPC endpoint's host:port


def localize(code: str, base: str) -> str:
    """The docs talk to port 8000 (and 8001 for gRPC); the test's servers listen on free ports."""
    addr = base.removeprefix("http://")
    code = code.replace("localhost:8000", addr).replace("127.0.0.1:8000", addr)
    if base in GRPC:
        code = code.replace("localhost:8001", GRPC[base]).replace("127.0.0.1:8001", GRPC[base])
    return code


def env_for(base: str | None = None, port: int | None = None) -> dict[str, str]:
    # the venv is NOT on PATH: a newcomer's shell has not activated it, so the docs call
    # `.venv/bin/...` (issue 32.11: a bare `rnnserve serve` passed here and failed for users)
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != BIN
    )
    env = {
        **os.environ,
        "PATH": path,
        "VENV": str(BIN.parent),  # `make serve` uses this environment, never makes its own
        "PYTHONUNBUFFERED": "1",
    }
    if base is not None:
        env["B"] = base  # api.md's examples say $B for the server's address
    if port is not None:
        env.update(RNNSERVE_PORT=str(port), RNNSERVE_HOST="127.0.0.1")
    return env


@pytest.fixture(scope="module")
def server_for(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Start]:
    """A server per Markdown file, started on first use by the file's `serve` block, run as a
    user would run it (`make serve`, `rnnserve serve`), or on the shipped models without one."""
    procs: list[subprocess.Popen[bytes]] = []
    bases: dict[Path, str] = {}
    logs = tmp_path_factory.mktemp("doc-servers")

    def start(path: Path) -> str:
        if path in bases:
            return bases[path]
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        grpc_port = free_port()
        GRPC[base] = f"127.0.0.1:{grpc_port}"
        serve = next((ex for ex in EXAMPLES if ex.path == path and "serve" in ex.options), None)
        cmd = (
            ["bash", "-c", "set -euo pipefail\n" + localize(serve.code, base)]
            if serve is not None
            else [str(BIN / "rnnserve"), "serve"]
        )
        env = env_for(base, port)
        env["RNNSERVE_GRPC_PORT"] = str(grpc_port)  # protocols.md's gRPC examples
        if serve is None:
            env["RNNSERVE_MODELS_DIR"] = str(ROOT / "models")
        log = logs / f"{path.name}.log"
        with log.open("wb") as out:
            # its own process group: `make serve` forks the server, and both must go
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        procs.append(proc)
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{path.name}'s server did not start:\n{log.read_text()}")
            time.sleep(0.1)
        bases[path] = base
        return base

    try:
        yield start
    finally:
        for proc in procs:
            with_group(proc, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with_group(proc, signal.SIGKILL)
                proc.wait(timeout=5)


def with_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def run(ex: Example, base: str) -> subprocess.CompletedProcess[str]:
    if ex.lang == "bash":
        cmd = ["bash", "-c", BASH_PRELUDE + localize(ex.code, base)]
    else:
        setup = SETUPS[ex.options["setup"]] if "setup" in ex.options else ""
        cmd = [sys.executable, "-c", localize(setup + ex.code, base)]
    return subprocess.run(
        cmd, cwd=ROOT, env=env_for(base), capture_output=True, text=True, timeout=180
    )


@pytest.mark.parametrize("ex", RUN, ids=[ex.id for ex in RUN])
def test_example_runs_and_prints_what_the_docs_show(ex: Example, server_for: Start) -> None:
    if ex.lang == "bash" and not (shutil.which("curl") and shutil.which("jq")):
        pytest.skip("curl or jq is not installed (scripts/system-deps.sh installs them)")
    done = run(ex, server_for(ex.path))
    assert done.returncode == 0, f"{ex.id} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    if ex.lang == "bash":
        missing = answers_found(expected_answers(ex.code), printed_json(done.stdout))
        assert not missing, (
            f"{ex.id}: the docs show answers it did not print: {missing}\n" + (done.stdout[-3000:])
        )
    if ex.output is not None:
        assert output_pattern(ex.output).search(done.stdout), (
            f"{ex.id} printed what its output block does not show:\n{done.stdout[-3000:]}"
        )


def test_every_example_is_run_or_says_why_not() -> None:
    """A new example is run unless its author writes down why it cannot be: the skips are few,
    each with a reason, and no file has two servers."""
    skipped = [ex for ex in EXAMPLES if ex.skip is not None]
    assert all(len(ex.skip or "") >= 12 for ex in skipped), [ex.id for ex in skipped]
    for path in DOCS:
        assert sum("serve" in ex.options for ex in EXAMPLES if ex.path == path) <= 1, path
        for ex in EXAMPLES:
            assert set(ex.options) <= {"serve", "setup", "skip"}, (ex.id, ex.options)
            assert ex.options.get("setup", "client") in SETUPS, ex.id
    assert len(RUN) >= 15 and {ex.path.name for ex in RUN} >= {
        "README.md",
        "api.md",
        "client.md",
        "protocols.md",
    }


# -- the checker itself: it must catch a drifted doc ------------------------------------------


def test_a_seeded_answer_is_checked_to_the_digits_shown() -> None:
    shown = expected_answers(
        "curl -s $B/x\n"
        '# {"model":"m","outputs":[{"label":"positive","probs":{"negative":0.0129,\n'
        '#   "positive":0.9871}}],"id":"…","usage":{…}}\n'
        "# prose, not an answer\n"
    )
    assert len(shown) == 1
    ok = {
        "model": "m",
        "outputs": [{"label": "positive", "probs": {"negative": 0.01294, "positive": 0.98706}}],
        "id": "abc",
        "usage": {"n": 1},
    }
    assert not answers_found(shown, printed_json("noise " + str(ok).replace("'", '"')))
    drifted = {**ok, "outputs": [{"label": "positive", "probs": {"negative": 0.0135}}]}
    assert answers_found(shown, [drifted]) == shown
    assert not matches({"text": "\nUhe u"}, {"text": "\n\nTIRIUS"})
    assert not matches({"a": 1}, {"a": 1, "b": 2})  # a new field is drift too


def test_an_output_block_allows_elisions_and_nothing_else() -> None:
    pat = output_pattern('event: token\ndata: {"text": "a"}\n...\nevent: done\ndata: {...}\n')
    assert pat.search('event: token\ndata: {"text": "a"}\nx\ny\nevent: done\ndata: {"z": 1}\n')
    assert not pat.search('event: token\ndata: {"text": "b"}\nevent: done\ndata: {}\n')
