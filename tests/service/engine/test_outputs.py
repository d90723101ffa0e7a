"""`outputs`: a batch of rows' outputs, the same numbers as `output` row by row
(a batch of session feeds answers exactly as the feeds alone would)."""

from __future__ import annotations

import numpy as np
import pytest

from service.engine.outputs import output, outputs
from service.engine.registry import Registry
from tests.service.conftest import CLS, LM


@pytest.mark.parametrize("name", [LM, CLS])
def test_outputs_are_output_row_by_row_bit_for_bit(registry: Registry, name: str) -> None:
    m = registry.models[name]
    k = len(m.manifest.labels or m.view.vocab)
    rng = np.random.default_rng(7)
    rows: list[np.ndarray | None] = [(rng.normal(size=k) * 4).astype(np.float32) for _ in range(6)]
    rows.insert(2, None)  # (a session before any token has no output)
    tops = [1, 3, 5, k + 10, 2, 3, 4]
    got = outputs(m, rows, tops)
    assert got == [output(m, r, t) for r, t in zip(rows, tops, strict=True)]
    assert got[2] is None


def test_no_rows_no_outputs(registry: Registry) -> None:
    assert outputs(registry.models[LM], [None, None], [3, 3]) == [None, None]
