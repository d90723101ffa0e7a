"""bench/reload.py on a fixture classifier: a real server keeps answering feeds while the model
is unloaded and loaded again, and the one JSON file has both windows, each load and unload, and
the memory loaded and unloaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import reload
from tests.conftest import FIXTURE_MODELS


@pytest.mark.timeout(120)
def test_feeds_go_on_through_loads_and_unloads_and_one_json_says_so(tmp_path: Path) -> None:
    out = tmp_path / "reload.json"
    args = ["--clients", "2", "--cycles", "2", "--quiet-s", "0.3"]
    args += ["--big", str(FIXTURE_MODELS / "tiny-sentiment-gru"), "--out", str(out)]
    assert reload.main(args) == 0  # (a feed that failed would have raised)
    r = json.loads(out.read_text())
    assert r["quiet"]["feeds"] > 0 and r["during"]["feeds"] >= 0
    assert len(r["load_s"]) == len(r["unload_s"]) == 2
    assert r["pss_mib_loaded"] > 0 and r["pss_mib_unloaded"] > 0
