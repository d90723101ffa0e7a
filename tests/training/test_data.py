from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from training.data.sentiment import load_labelled, read_examples, sort_labels
from training.data.splits import random_split, tail_split
from training.data.text import load_text


def gz(src: Path, dest: Path) -> Path:
    with src.open("rb") as f, gzip.open(dest, "wb") as g:
        shutil.copyfileobj(f, g)
    return dest


def test_imdb_folder_layout(fixtures: Path) -> None:
    train = read_examples("imdb", fixtures / "aclImdb")
    assert [e.label for e in train] == ["negative", "negative", "positive", "positive"]
    # numeric id order inside each label folder: 3_1 before 11_2, 2_8 before 10_9
    assert train[0].text.startswith("Terrible") and train[2].text.startswith("Great")
    assert "<br />" in train[3].text  # loaders keep the text as is; the tokenizer drops <br />
    test = read_examples("imdb", fixtures / "aclImdb", split="test")
    assert {e.label for e in test} == {"negative", "positive"} and len(test) == 2
    assert read_examples("imdb", fixtures / "aclImdb" / "test") == test
    with pytest.raises(FileNotFoundError, match="aclImdb layout"):
        read_examples("imdb", fixtures / "SST-2")


def test_glue_tsv_and_folder(fixtures: Path) -> None:
    rows = read_examples("sst2", fixtures / "SST-2" / "train.tsv")
    assert rows[0].text == "it 's a charming and often affecting journey ."  # trailing space gone
    assert [e.label for e in rows] == ["positive", "negative", "positive"]
    assert rows[2].text == 'the "best" film of the year'  # GLUE TSV is unquoted
    assert read_examples("sst2", fixtures / "SST-2", split="dev")[1].label == "negative"


def test_generic_csv_and_jsonl_columns(fixtures: Path, tmp_path: Path) -> None:
    rows = read_examples("table", fixtures / "reviews.csv", "review", "stars")
    assert rows[1].text == 'Dull, "meh" plot' and rows[3].text.startswith("Multi-line\n")
    data = load_labelled(
        "table",
        fixtures / "reviews.csv",
        text_column="review",
        label_column="stars",
        val_fraction=0.25,
    )
    assert data.labels == ["1", "3", "5", "10"]  # integers sort numerically
    j = load_labelled(
        "table",
        fixtures / "reviews.jsonl",
        text_column="body",
        label_column="verdict",
        val_fraction=0.0,
    )
    assert j.labels == ["no", "yes"] and len(j.train) == 3 and j.val == []
    with pytest.raises(ValueError, match="no column 'text'"):
        read_examples("table", fixtures / "reviews.jsonl")


def test_gzip_is_transparent(fixtures: Path, tmp_path: Path) -> None:
    plain = read_examples("table", fixtures / "reviews.jsonl", "body", "verdict")
    assert (
        read_examples(
            "table", gz(fixtures / "reviews.jsonl", tmp_path / "r.jsonl.gz"), "body", "verdict"
        )
        == plain
    )
    tsv = gz(fixtures / "SST-2" / "train.tsv", tmp_path / "train.tsv.gz")
    assert read_examples("sst2", tsv) == read_examples("sst2", fixtures / "SST-2" / "train.tsv")
    txt = gz(fixtures / "tiny.txt", tmp_path / "tiny.txt.gz")
    assert load_text(txt).train == load_text(fixtures / "tiny.txt").train


def test_shared_jsonl_labels_map() -> None:
    p = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "sst2" / "dev.jsonl.gz"
    if not p.exists():
        pytest.skip("shared datasets not present")
    rows = read_examples("sst2", p)
    assert len(rows) == 872 and {e.label for e in rows} == {"negative", "positive"}


def test_random_split_is_seeded_and_disjoint() -> None:
    items = list(range(100))
    a_train, a_val = random_split(items, 0.1, seed=3)
    b_train, b_val = random_split(items, 0.1, seed=3)
    assert (a_train, a_val) == (b_train, b_val) and len(a_val) == 10
    assert sorted(a_train + a_val) == items
    assert random_split(items, 0.1, seed=4)[1] != a_val
    assert len(random_split([1, 2], 0.01, 0)[1]) == 1  # both sides non-empty


def test_nanogpt_split() -> None:
    train, val = tail_split("x" * 1_115_394, 0.1)
    assert (len(train), len(val)) == (1_003_854, 111_540)  # nanoGPT's shakespeare_char numbers


def test_sort_labels() -> None:
    assert sort_labels({"10", "2", "-1"}) == ["-1", "2", "10"]
    assert sort_labels({"pos", "neg", "10"}) == ["10", "neg", "pos"]
