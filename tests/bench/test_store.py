"""bench/store.py at smoke size: both stores step sessions, from this tree and from a baseline
ref beside it, the commands per call and the bytes per session of every shipped model come back
in one JSON file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import store
from tests.loopback import REDIS_SERVER

pytestmark = pytest.mark.redis


@pytest.mark.timeout(180)
def test_both_stores_step_and_the_costs_come_back(tmp_path: Path) -> None:
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is not installed (scripts/system-deps.sh installs it)")
    out = tmp_path / "store.json"
    args = ["--clients", "2", "--seconds", "0.5", "--rounds", "1", "--sessions", "20"]
    assert store.main([*args, "--base", "HEAD", "--keyed", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["runs"]) == {
        f"{tree}:{s}" for tree in "AB" for s in ("primary", "cluster", "cluster_wait")
    }
    assert all(run["steps_per_s"][0] > 0 for run in r["runs"].values())
    assert r["trees"]["B"] == str(store.REPO) and r["trees"]["A"] != r["trees"]["B"]
    # two round trips a step: the lease taken with the session's read, the commit that gives
    # the lease up
    assert r["scripts_per_step"] == 2
    assert r["commands_per_step"] > r["scripts_per_step"]  # (what the scripts run inside)
    assert {"char-lstm", "sentiment-lstm"} <= set(r["bytes_per_session"])
    assert all(b > 500 for b in r["bytes_per_session"].values())
