"""The behavioural test set: its file, its scorer, `rnnserve evaluate`'s report and the card
section export writes."""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from pathlib import Path

import pytest

from training.data.behaviour import SETS_DIR, Case, load_cases, set_for_labels

SENTIMENT = SETS_DIR / "sentiment.jsonl"
FIXTURE_MODELS = Path(__file__).resolve().parents[1] / "fixtures" / "models"


def test_the_sentiment_set_is_small_balanced_and_well_formed() -> None:
    cases = load_cases(SENTIMENT)
    assert 30 <= len(cases) <= 60
    assert len({c.text for c in cases}) == len(cases)  # no duplicates
    per = Counter(c.capability for c in cases)
    assert set(per) == {"control", "negation", "contrast", "intensity"}
    assert min(per.values()) >= 8
    for cap in per:  # each capability asks for both labels
        assert {c.label for c in cases if c.capability == cap} == {"negative", "positive"}
    # the two sentences of the issue are in it
    texts = {c.text for c in cases}
    assert "Not good at all. Two hours of my life I will never get back." in texts
    assert "Not bad at all, actually one of the best comedies I have seen this year." in texts


def test_a_malformed_line_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "s.jsonl"
    good = json.dumps({"capability": "control", "label": "positive", "text": "Great."})
    bad.write_text(good + "\n" + json.dumps({"label": "negative", "text": "Bad."}) + "\n")
    with pytest.raises(ValueError, match=r"s\.jsonl:2: need exactly the string fields"):
        load_cases(bad)


def test_a_set_applies_only_to_its_labels(tmp_path: Path) -> None:
    assert set_for_labels(["negative", "positive"]) == SENTIMENT
    assert set_for_labels(["positive", "negative"]) == SENTIMENT
    assert set_for_labels(["no", "yes"]) is None
    assert set_for_labels(["negative", "neutral", "positive"]) is None
    assert set_for_labels(["negative", "positive"], tmp_path) is None  # no sets there


torch = pytest.importorskip("torch")

from training.evaluate import behaviour_report, evaluate_run, format_report  # noqa: E402


def test_behaviour_report_counts_per_capability() -> None:
    cases = [
        Case("not bad", "positive", "negation"),
        Case("not good", "negative", "negation"),
        Case("great", "positive", "control"),
    ]
    # label order: negative, positive
    rep = behaviour_report(
        cases, [[0.7, 0.3], [0.6, 0.4], [0.1, 0.9]], ["negative", "positive"], "x"
    )
    assert (rep["set"], rep["passed"], rep["total"]) == ("x", 2, 3)
    assert rep["capabilities"] == {
        "negation": {"passed": 1, "total": 2},
        "control": {"passed": 1, "total": 1},
    }
    first = rep["cases"][0]
    assert first["predicted"] == "negative" and not first["passed"]
    assert first["p_expected"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="3 cases but 2 predictions"):
        behaviour_report(cases, [[0.5, 0.5]] * 2, ["negative", "positive"], "x")


def _train_classifier(tmp_path: Path, labels: tuple[str, str]) -> Path:
    """A seconds-long classifier run on a synthetic table whose labels are `labels`."""
    from training.config import load_config
    from training.experiment import train

    rng = random.Random(0)
    good = ["great", "wonderful", "loved", "best", "fun"]
    bad = ["awful", "boring", "hated", "worst", "dull"]
    rows = []
    for _ in range(300):
        y = rng.random() < 0.5
        words = rng.choices(good if y else bad, k=4) + rng.choices(["the", "film", "a"], k=3)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": labels[int(y)]})
    data = tmp_path / "t.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(
        "smoke-sentiment",
        [
            "data.dataset='table'",
            f"data.path='{data}'",
            "data.limit=0",
            "train.max_steps=20",
            "train.eval_every=10",
        ],
    )
    train(cfg, tmp_path / "run")
    return tmp_path / "run"


def test_evaluate_reports_the_behaviour_set_of_a_sentiment_run(tmp_path: Path) -> None:
    from training.sample import classify

    run = _train_classifier(tmp_path, ("negative", "positive"))
    rep = evaluate_run(run, device="cpu")
    b = rep["behaviour"]
    cases = load_cases(SENTIMENT)
    assert b["set"] == "sentiment.jsonl" and b["total"] == len(cases)
    assert {k: v["total"] for k, v in b["capabilities"].items()} == Counter(
        c.capability for c in cases
    )
    assert b["passed"] == sum(r["passed"] for r in b["cases"])
    # the padded batch scores each sentence as `rnnserve sample` scores it alone
    for row in b["cases"][:: len(cases) // 5]:
        alone = classify(run, row["text"])
        assert row["p_expected"] == pytest.approx(alone[row["label"]], abs=1e-5)
    text = format_report(rep)
    assert f"behaviour (sentiment.jsonl): {b['passed']}/{b['total']} passed" in text
    assert text.count("  FAIL ") == b["total"] - b["passed"]


def test_evaluate_has_no_behaviour_for_other_labels(tmp_path: Path) -> None:
    rep = evaluate_run(_train_classifier(tmp_path, ("no", "yes")), device="cpu")
    assert rep["accuracy"] > 0 and "behaviour" not in rep
    assert "behaviour" not in format_report(rep)


def test_card_section_is_written_from_the_graph_and_replaced_in_place(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from training.export.card import BEGIN, END, behaviour_of_artifact, update_card

    art = tmp_path / "tiny"
    shutil.copytree(FIXTURE_MODELS / "tiny-sentiment-gru", art)
    (art / "README.md").write_text("# tiny\n\nProse above.\n")
    rep = update_card(art)
    assert rep is not None and rep == behaviour_of_artifact(art)
    card = (art / "README.md").read_text()
    assert card.startswith("# tiny\n\nProse above.\n\n" + BEGIN) and card.endswith(END + "\n")
    for cap, t in rep["capabilities"].items():
        assert f"| {cap} | {t['passed']}/{t['total']} |" in card
    assert card.count("\n- ") == rep["total"] - rep["passed"]  # one line per failure
    # prose after the section survives a refresh, and the section is replaced, not repeated
    (art / "README.md").write_text(card + "\nProse below.\n")
    update_card(art)
    again = (art / "README.md").read_text()
    assert again == card + "\nProse below.\n" and again.count(BEGIN) == 1


def test_no_section_for_a_language_model(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from training.export.card import update_card

    art = tmp_path / "lm"
    shutil.copytree(FIXTURE_MODELS / "tiny-char-gru", art)
    assert update_card(art) is None and not (art / "README.md").exists()


def test_export_writes_the_card_section(tmp_path: Path) -> None:
    """A regenerated artifact keeps its card's behavioural section: export writes it."""
    pytest.importorskip("onnxruntime")
    from training.export import export_command
    from training.export.card import BEGIN

    run = _train_classifier(tmp_path, ("negative", "positive"))
    out = tmp_path / "art"
    export_command(run, out, "art", "1")
    card = (out / "README.md").read_text()
    assert card.startswith("# art\n") and BEGIN in card
    assert "| **all** | **" in card
