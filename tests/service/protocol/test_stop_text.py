"""The stop-string text matcher both sides of the wire run: what is released, what held back."""

from __future__ import annotations

import pytest

from service.protocol.stop_text import StopMatcher


@pytest.mark.parametrize(
    ("pieces", "stops", "emitted", "matched"),
    [
        (["a", "b", "c"], [], "abc", None),
        (["he", "ll", "o w"], ["lo"], "hel", "lo"),
        (["a", "\n", "\n", "b"], ["\n\n"], "a", "\n\n"),
        (["x", "\n", "y"], ["\n\n"], "x\ny", None),
        (["ab", "cd"], ["bc", "d"], "a", "bc"),
    ],
)
def test_stop_matcher(
    pieces: list[str], stops: list[str], emitted: str, matched: str | None
) -> None:
    m = StopMatcher(stops)
    out = ""
    for p in pieces:
        out += m.push(p)
        if m.matched:
            break
    if not m.matched:
        out += m.flush()
    assert (out, m.matched) == (emitted, matched)
