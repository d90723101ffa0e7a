"""The progress bar follows the limit that ends the run: the step budget, or the time cap with
the time left as its ETA (it used to read `0%| 27/6100 [00:16<56:27` under a 30 s cap)."""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

import pytest

from training.progress import BAR_FORMAT, Progress, clock, estimate


def test_without_a_cap_the_steps_govern() -> None:
    e = estimate(step=25, total=100, seconds=10.0, cap_s=math.inf, steps_per_s=2.5)
    assert (e.limit, e.fraction, e.eta_s) == ("steps", 0.25, 30.0)


def test_a_cap_that_comes_first_governs_with_the_time_left() -> None:
    # 27 of 6100 steps in 16 s: the steps would take ~60 min, the 30 s cap ends the run
    e = estimate(step=27, total=6100, seconds=16.0, cap_s=30.0, steps_per_s=27 / 16)
    assert e.limit == "time cap"
    assert e.fraction == pytest.approx(16 / 30) and e.eta_s == pytest.approx(14.0)


def test_steps_that_end_before_the_cap_govern() -> None:
    e = estimate(step=90, total=100, seconds=9.0, cap_s=3600.0, steps_per_s=10.0)
    assert (e.limit, e.fraction, e.eta_s) == ("steps", 0.9, 1.0)


def test_before_the_pace_is_known_the_cap_governs() -> None:
    assert estimate(0, 100, 0.0, 30.0, 0.0).limit == "time cap"
    no_cap = estimate(0, 100, 0.0, math.inf, 0.0)
    assert no_cap.limit == "steps" and no_cap.eta_s == math.inf


def test_past_the_cap_is_full_not_more() -> None:
    e = estimate(step=40, total=6100, seconds=31.0, cap_s=30.0, steps_per_s=1.3)
    assert (e.fraction, e.eta_s) == (1.0, 0.0)


def test_clock() -> None:
    assert [clock(14.2), clock(3 * 60 + 7), clock(3600 + 62), clock(math.inf)] == [
        "00:14",
        "03:07",
        "1:01:02",
        "?",
    ]


def _last_bar(stderr: str) -> str:
    """The last state tqdm drew (it redraws one line with carriage returns)."""
    frames = [f for f in re.split(r"[\r\n]", stderr) if "%|" in f]
    assert frames, stderr
    return frames[-1]


def test_bar_follows_the_clock_under_a_cap(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tqdm")
    p = Progress(6100, 0, "on", "run", time_cap_s=30.0)
    for i in range(1, 28):
        p.update(tokens=64, seconds=i * 16 / 27)
    p.postfix(loss=2.5)
    p.close()
    bar = _last_bar(capsys.readouterr().err)
    assert re.match(r"run:\s+53%\|", bar), bar
    assert "loss=2.5 step 27/6100, 00:16/00:30 [ETA 00:14 time cap, 1.69 step/s]" in bar


def test_bar_resumed_counts_the_earlier_time(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tqdm")
    # resumed at step 50 after 20 s of a 100-step run, then 10 steps in 5 s: 40 steps at 2/s
    p = Progress(100, 50, "on", "run", seconds=20.0)
    for i in range(1, 11):
        p.update(tokens=1, seconds=20.0 + i * 0.5)
    p.close()
    bar = _last_bar(capsys.readouterr().err)
    assert re.match(r"run:\s+60%\|", bar) and "step 60/100, 00:25 [ETA 00:20 steps" in bar, bar


def test_training_with_a_time_cap_ends_with_a_full_bar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real run whose step budget would take hours, capped at 1.2 s: the bar fills with the
    clock and names the cap (before, it ended at 0 % of 100,000 steps)."""
    pytest.importorskip("torch")
    pytest.importorskip("tqdm")
    from training.config import load_config
    from training.experiment import train

    rng = random.Random(0)
    text = tmp_path / "t.txt"
    text.write_text("".join(rng.choice("abcab \n") for _ in range(5000)))
    cfg = load_config(
        "smoke-char",
        [
            f"data.path='{text}'",
            "data.limit=0",
            "train.batch_size=4",
            "train.seq_len=16",
            "train.max_steps=100000",
            "train.max_minutes=0.02",
            "train.eval_every=0",
            "train.progress='on'",
            "optim.warmup_steps=50000",
        ],
    )
    summary = train(cfg, tmp_path / "run")
    assert 20 <= summary["steps"] < 100000, summary["steps"]
    out, err = capsys.readouterr()
    # issue 32.17: a cap that ends the run inside the warm-up is said at step 20 (tqdm writes
    # notes to stdout)
    said = out + err
    assert "time cap ends the run near step" in said and "50000-step learning-rate warm-up" in said
    bar = _last_bar(err)
    assert re.match(r"smoke-char:\s+100%\|", bar), bar
    assert f"step {summary['steps']}/100000, " in bar and "/00:01 [ETA 00:00 time cap" in bar


def test_a_narrow_terminal_keeps_the_bar_and_the_metrics(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 32.17: on 120 columns the status squeezed tqdm's bar to one character and cut the
    metrics. The bar keeps 12 columns, the metrics come first, the rest is cut to fit."""
    pytest.importorskip("tqdm")
    from training.progress import _bar_class

    bar_class = _bar_class()
    bar_class.status = "loss=2.5 val_loss=2.41 " + "step 27/6100, 00:16/00:30 [ETA 00:14] " * 5
    b = bar_class(total=1000, desc="char-lstm", ncols=120, bar_format=BAR_FORMAT)
    b.update(500)
    b.close()
    line = _last_bar(capsys.readouterr().err)
    assert len(line) <= 120, line
    assert re.search(r"\|.{12}\| loss=2\.5 val_loss=2\.41 ", line), line
    assert line.endswith("…"), line
