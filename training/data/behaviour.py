"""Behavioural test sets: small, hand-written sentences in the spirit of CheckList (Ribeiro et
al. 2020), each with the label a competent classifier must give and the capability it probes
(negation, contrast, intensity, plain controls).

They complement held-out accuracy: 88 % on IMDB says nothing about whether "not bad at all" reads
as praise. The sets live in `behaviour_sets/*.jsonl` (`{"capability", "label", "text"}` per line)
and are never trained on. A set applies to a model whose labels are exactly the set's labels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SETS_DIR = Path(__file__).parent / "behaviour_sets"
FIELDS = ("capability", "label", "text")


@dataclass(frozen=True)
class Case:
    text: str
    label: str  # the label a competent model gives
    capability: str  # what the sentence probes, e.g. "negation"


def load_cases(path: Path) -> list[Case]:
    """The cases of one JSONL set; a malformed line stops with its file and line number."""
    cases: list[Case] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        bad = [k for k in FIELDS if not isinstance(row.get(k), str) or not row[k].strip()]
        if bad or set(row) != set(FIELDS):
            raise ValueError(f"{path}:{n}: need exactly the string fields {FIELDS}, got {row}")
        cases.append(Case(row["text"], row["label"], row["capability"]))
    if not cases:
        raise ValueError(f"{path}: no cases")
    return cases


def set_for_labels(labels: list[str], sets_dir: Path = SETS_DIR) -> Path | None:
    """The behaviour set whose labels are exactly `labels` (e.g. the sentiment set for
    negative/positive models), or None when no set applies."""
    for path in sorted(sets_dir.glob("*.jsonl")):
        if {c.label for c in load_cases(path)} == set(labels):
            return path
    return None
