"""Labelled text for classification: IMDB, SST-2 and any CSV / TSV / JSONL table.

Formats read (gzip transparent everywhere):
* IMDB: the original `aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt` folder layout, or a table
  (the shared copy is `imdb/train.jsonl.gz` with `text` / `label`).
* SST-2: GLUE's TSV (`sentence<TAB>label`, label 0/1) or a table with `text` / `label`.
* table: any CSV / TSV / JSONL with configurable text and label columns.

Labels are strings. Named datasets map to `negative` / `positive`; a generic table's labels are
discovered and sorted (numerically when all are integers, else as strings), so the logits order is
a deterministic function of the data, never of file order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.data.io import iter_rows
from training.data.splits import random_split

IMDB_LABELS = {"neg": "negative", "pos": "positive"}
GLUE_LABELS = {"0": "negative", "1": "positive"}


@dataclass(frozen=True)
class Example:
    text: str
    label: str


@dataclass
class LabelledData:
    train: list[Example]
    val: list[Example]
    labels: list[str]  # index order = logits order
    source: str


def sort_labels(labels: set[str]) -> list[str]:
    if all(re.fullmatch(r"-?\d+", x) for x in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def _imdb_split_dir(path: Path, split: str) -> Path:
    """Accept `.../aclImdb/train`, `.../aclImdb` (+ split) or the folder holding `aclImdb`."""
    for cand in (path, path / split, path / "aclImdb" / split):
        if (cand / "pos").is_dir() and (cand / "neg").is_dir():
            return cand
    raise FileNotFoundError(f"{path}: no aclImdb layout ({split}/pos and {split}/neg) found")


def _imdb_key(p: Path) -> tuple[int, str]:
    stem = p.stem.split("_")[0]
    return (int(stem), p.name) if stem.isdigit() else (1 << 62, p.name)


def read_imdb_folder(path: Path, split: str = "train") -> list[Example]:
    """Reviews of one split, ordered by (label folder, numeric id): deterministic across machines."""
    root = _imdb_split_dir(path, split)
    out: list[Example] = []
    for folder, label in sorted(IMDB_LABELS.items()):
        for f in sorted((root / folder).glob("*.txt"), key=_imdb_key):
            out.append(Example(f.read_text(encoding="utf-8"), label))
    return out


def read_table(
    path: Path, text_column: str, label_column: str, label_map: dict[str, str] | None = None
) -> list[Example]:
    out: list[Example] = []
    for i, row in enumerate(iter_rows(path)):
        missing = [c for c in (text_column, label_column) if c not in row]
        if missing:
            raise ValueError(
                f"{path}: row {i + 1} has no column {missing[0]!r} (columns: {sorted(row)}); "
                "set data.text_column / data.label_column"
            )
        label: Any = row[label_column]
        label = str(label).strip()
        if label_map is not None:
            label = label_map.get(label, label)
        out.append(Example(str(row[text_column]), label))
    return out


def read_sst2(path: Path, split: str = "train") -> list[Example]:
    """GLUE TSV (`sentence`, 0/1) or a text/label table; a folder means `SST-2/<split>.tsv`."""
    if path.is_dir():
        for cand in (path / f"{split}.tsv", path / "SST-2" / f"{split}.tsv"):
            if cand.exists():
                path = cand
                break
        else:
            raise FileNotFoundError(f"{path}: no {split}.tsv (GLUE SST-2 layout)")
    if path.name.replace(".gz", "").endswith(".tsv"):
        examples = read_table(path, "sentence", "label", GLUE_LABELS)
        # GLUE ends each sentence with a space before the tab; the shared JSONL strips it too.
        return [Example(e.text.strip(), e.label) for e in examples]
    return read_table(path, "text", "label", GLUE_LABELS)


def read_examples(
    dataset: str,
    path: Path,
    text_column: str = "text",
    label_column: str = "label",
    split: str = "train",
) -> list[Example]:
    """Every example of one file or folder, in file order."""
    if not path.exists():
        raise FileNotFoundError(f"data file {path} not found")
    if dataset == "imdb":
        if path.is_dir():
            return read_imdb_folder(path, split)
        return read_table(path, text_column, label_column, IMDB_LABELS)
    if dataset == "sst2":
        return read_sst2(path, split)
    if dataset == "table":
        return read_table(path, text_column, label_column)
    raise ValueError(f"dataset {dataset!r} is not labelled text")


def load_labelled(
    dataset: str,
    path: Path,
    *,
    val_path: Path | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    text_column: str = "text",
    label_column: str = "label",
    limit: int = 0,
) -> LabelledData:
    """Train/val examples and the sorted label list. Without `val_path`, a seeded random split."""
    examples = read_examples(dataset, path, text_column, label_column)
    if limit:
        examples = examples[:limit]
    if val_path is not None:
        train = examples
        held_split = "dev" if dataset == "sst2" else "test"  # GLUE's name vs aclImdb's
        val = read_examples(dataset, val_path, text_column, label_column, split=held_split)
        if limit:
            val = val[: max(1, int(limit * val_fraction) or limit)]
        source = f"{dataset}: {path} (val: {val_path})"
    else:
        train, val = random_split(examples, val_fraction, split_seed)
        source = f"{dataset}: {path} ({val_fraction:.0%} held out, split seed {split_seed})"
    if not train:
        raise ValueError(f"{path}: no training examples")
    labels = sort_labels({e.label for e in train} | {e.label for e in val})
    return LabelledData(train, val, labels, source)
