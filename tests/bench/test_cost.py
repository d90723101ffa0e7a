"""bench/cost.py's arithmetic: CPU summed by process role, and the table of medians and ratios."""

from __future__ import annotations

from bench import cost


def test_cpu_is_summed_by_role_and_differenced() -> None:
    before = cost._roles({"rnnserve-engine": 1.0, "rnnserve-worker": 2.0, "python": 0.5})
    after = cost._roles({"rnnserve-engine": 3.0, "rnnserve-worker": 2.5, "python": 0.5, "sh": 1})
    one = cost.ROLES["python"]
    assert before == {"engine": 1.0, "workers": 2.0, one: 0.5}
    assert cost._delta(before, after) == {"engine": 2.0, "workers": 0.5, one: 0.0, "other": 1}


def _round(engine_us: float, rps: float) -> dict[str, object]:
    return {
        "step": {"rps": rps, "us_per_request": {"engine": engine_us, "workers": 100.0}},
        "streams-256": {"tokens_per_s": 1000.0, "us_per_token": {"engine": engine_us / 20}},
    }


def test_the_table_gives_medians_and_the_ratio_b_over_a() -> None:
    results = {
        "A:main": [_round(100.0, 1000.0), _round(120.0, 900.0), _round(110.0, 950.0)],
        "B:tree": [_round(50.0, 2000.0), _round(40.0, 2100.0), _round(45.0, 1900.0)],
    }
    md = cost.table(results, [256])
    assert "| step (µs CPU / step) | engine | 110.00 | 45.00 | 0.41 |" in md
    assert "| step | req/s | 950 | 2000 | 2.11 |" in md
    assert "| streams-256 (µs CPU / token) | engine | 5.50 | 2.25 | 0.41 |" in md


def test_memory_is_read_per_process_name_from_proc() -> None:
    """`pss_by_name`, which `streams` reads before and while the streams are open: this
    process's PSS under its kernel name, and the same total as `pss_bytes`."""
    import os
    from pathlib import Path

    from bench.procs import pss_by_name, pss_bytes

    me = os.getpid()
    name = Path(f"/proc/{me}/comm").read_text().strip()
    by_name = pss_by_name([me, 2**22 + 1])  # (a pid that is not there is skipped)
    assert set(by_name) == {name} and by_name[name] > 1 << 20
    assert abs(pss_bytes([me]) - by_name[name]) < 1 << 20  # (read twice: it moves a little)
