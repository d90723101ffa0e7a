"""bench/gpu_check.py, the script prepared for a machine with a GPU, run here on the CPU
provider on a fixture model: every check runs and passes (the same code paths as on CUDA: state
bound to each step, rows moved by the device graphs, a session through the whole service), every
measurement comes back, and the one JSON file says so. A provider that is not there is exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import gpu_check
from tests.conftest import FIXTURE_MODELS


@pytest.mark.timeout(180)
def test_the_whole_check_runs_on_the_cpu_and_writes_one_json(tmp_path: Path) -> None:
    out = tmp_path / "gpu-check.json"
    args = ["--provider", "cpu", "--models-dir", str(FIXTURE_MODELS), "--model", "tiny-char-lstm"]
    args += ["--streams", "16,32", "--step-clients", "4", "--seconds", "1.5", "--warm", "0.5"]
    assert gpu_check.main([*args, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["ok"] is True and report["machine"]["onnxruntime"]
    (variant,) = report["variants"]  # the fixture has no fp16 graph: skipped, not failed
    res = report["variants"][variant]
    want = {"provider", "chunked_equals_whole", "padded_equals_alone", "io_binding",
            "device_rows", "sessions"}  # fmt: skip
    assert set(res["checks"]) == want
    assert all(c["ok"] for c in res["checks"].values()), res["checks"]
    assert res["checks"]["io_binding"]["max_diff"] == 0.0  # same provider: bit-identical
    for n in ("16", "32"):
        assert res["bare"][n]["host_tokens_per_s"] > 0 and res["bare"][n]["device_tokens_per_s"] > 0
    for key in ("step-4", "streams-16", "streams-32"):
        run = res["engine"][key]
        assert run["errors"] == 0 and run["rate"] > 0 and run["us_per_unit"] > 0, (key, run)


def test_a_provider_this_onnxruntime_lacks_is_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_check.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert gpu_check.main(["--provider", "cuda"]) == 2
