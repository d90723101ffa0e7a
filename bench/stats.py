"""Pure helpers: medians over rounds and ratios against a reference measured in the same round."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

KEYS = ("rps", "p50_ms", "p99_ms", "client_cpu", "server_cpu")
REFERENCES = ("floor", "pytriton-bin")


def summarize(
    runs: dict[str, list[dict[str, Any]]], refs: Sequence[str] = REFERENCES
) -> dict[str, dict[str, Any]]:
    """Per target: the median of each metric over rounds, total errors, and `x_<ref>`: the
    median over rounds of (target req/s / reference req/s in the SAME round), so slow drift of
    a shared machine cancels out of the ratio."""
    out: dict[str, dict[str, Any]] = {}
    for t, rs in runs.items():
        if not rs:
            continue
        s: dict[str, Any] = {k: statistics.median(r[k] for r in rs) for k in KEYS}
        s["errors"] = sum(int(r["errors"]) for r in rs)
        s["rps_runs"] = [r["rps"] for r in rs]
        for ref in refs:
            if t != ref and runs.get(ref):
                ratios = [
                    a["rps"] / b["rps"] for a, b in zip(rs, runs[ref], strict=True) if b["rps"] > 0
                ]
                if ratios:
                    s[f"x_{ref}"] = statistics.median(ratios)
        out[t] = s
    return out
