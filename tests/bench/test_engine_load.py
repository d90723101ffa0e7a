"""bench/engine_load.py: the wire-level load counts tokens in either wire version's frames, and
a short run against this tree's real engine process measures its CPU per step and per token."""

from __future__ import annotations

import numpy as np
import pytest

from bench import engine_load
from service.transport import wire


def test_tokens_are_counted_in_the_frames_of_both_wire_versions() -> None:
    ids = wire.StepIds.of(np.array([1, 2, 3]), np.array([4, 5, 6]))
    (frame,) = engine_load.msgspec.msgpack.decode(wire.encoder.encode([ids]))
    assert engine_load._tokens(frame) == 3
    v11 = {"type": "step", "rids": [1, 2], "texts": ["a", "b"], "ids": [4, 5], "indexes": [0, 0]}
    assert engine_load._tokens(v11) == 2
    assert engine_load._tokens({"type": "result", "rid": 1, "value": {}}) == 0


@pytest.mark.timeout(120)
def test_a_short_run_measures_the_engine_and_counts_no_errors() -> None:
    out = engine_load.run_once(engine_load.REPO, [32], seconds=1.5)
    for key in ("step", "streams-32"):
        r = out[key]
        assert r["errors"] == 0 and r["rate"] > 0 and r["us_per_unit"] > 0, (key, r)
