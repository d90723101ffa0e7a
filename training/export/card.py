"""The model card's behavioural section, written from the exported graph itself.

For a classifier whose labels match a behavioural set (`training/data/behaviour.py`), every
sentence is fed through onnxruntime on `model.onnx` (one row per call, the way a client sends
it) and scored with `training.evaluate.behaviour_report`. The section goes between two markers
in `README.md`, replacing the previous one, so the rest of the card stays as written and a
re-export keeps the section current. `tests/test_shipped_models.py` re-runs the sentences on the
service side and checks the card's claims.

    python -m training.export.card models/NAME    # refresh the section without re-exporting
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from service.contract import load_artifact, tokenizer_from_spec
from training.data.behaviour import load_cases, set_for_labels
from training.evaluate import behaviour_report
from training.export.verify import make_session, run_graph

CARD = "README.md"
BEGIN = "<!-- behaviour:begin (written by training/export/card.py; do not edit by hand) -->"
END = "<!-- behaviour:end -->"


def behaviour_of_artifact(model_dir: Path) -> dict[str, Any] | None:
    """The behaviour report of an exported classifier (fp32 graph), or None if no set applies."""
    manifest, onnx_path = load_artifact(model_dir)
    if manifest.task != "classify" or not manifest.labels:
        return None
    path = set_for_labels(manifest.labels)
    if path is None:
        return None
    cases = load_cases(path)
    sess = make_session(onnx_path.read_bytes())
    tok = tokenizer_from_spec(manifest.tokenizer)
    probs = []
    for case in cases:
        ids = np.array([tok.encode(case.text)], np.int64)  # (1, T)
        lengths = np.array([ids.shape[1]], np.int32)
        logits, _ = run_graph(sess, manifest.io, ids, lengths, manifest.init_states(1))
        z = np.exp(logits[0] - logits[0].max())  # (K,) softmax
        probs.append((z / z.sum()).tolist())
    return behaviour_report(cases, probs, manifest.labels, path.name)


def render(rep: dict[str, Any]) -> str:
    """The section's markdown, markers included."""
    lines = [
        BEGIN,
        "## Behavioural tests",
        "",
        f"Hand-written sentences (CheckList-style; `training/data/behaviour_sets/{rep['set']}`, "
        "never trained on), fed one at a time through onnxruntime on this `model.onnx`. A "
        "sentence passes when the most probable label is the expected one. `rnnserve evaluate "
        "RUN_DIR` prints the same table for a run.",
        "",
        "| capability | passed |",
        "|---|---:|",
    ]
    for cap, t in rep["capabilities"].items():
        lines.append(f"| {cap} | {t['passed']}/{t['total']} |")
    lines.append(f"| **all** | **{rep['passed']}/{rep['total']}** |")
    failed = [r for r in rep["cases"] if not r["passed"]]
    lines += ["", "Fails:" if failed else "Fails: none."]
    for r in failed:
        lines.append(
            f'- {r["capability"]}: "{r["text"]}" → {r["predicted"]} '
            f"(p({r['label']}) {r['p_expected']:.2f})"
        )
    lines.append(END)
    return "\n".join(lines) + "\n"


def write_section(card: Path, section: str, title: str) -> None:
    """Replace the marked section of `card` with `section` (appended if absent; a missing card
    becomes a title and the section)."""
    text = card.read_text(encoding="utf-8") if card.is_file() else f"# {title}\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        text = head + section + (("\n" + tail) if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    card.write_text(text, encoding="utf-8")


def update_card(model_dir: Path) -> dict[str, Any] | None:
    """Score the exported classifier and refresh its card's section; None if no set applies."""
    rep = behaviour_of_artifact(model_dir)
    if rep is not None:
        write_section(model_dir / CARD, render(rep), model_dir.name)
    return rep


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        got = update_card(Path(arg))
        print(f"{arg}: " + (f"{got['passed']}/{got['total']} passed" if got else "no set applies"))
