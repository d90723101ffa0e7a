"""`rnnserve evaluate RUN_DIR`: score a trained checkpoint.

* classify: accuracy, macro F1, per-class F1, confusion matrix (rows = truth, columns = prediction).
* next_token: mean cross-entropy in nats/char, bits/char (nats / ln 2) and perplexity (e^nats).
* classify, in addition: the behavioural test set whose labels are the model's
  (`training/data/behaviour.py`; negation, contrast, intensity, controls), as pass counts per
  capability and the sentences that failed. `behaviour_report` is the one scorer: the model cards'
  section (`training/export/card.py`, through onnxruntime) uses it too.

Without `--data` the run's own validation split is rebuilt from its saved config (same seed, same
split). With `--data` any file or folder the loaders read is scored whole: e.g. the official IMDB
test split, `--data aclImdb --split test`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from training import checkpoint as ck
from training.config import config_from_dict
from training.data.behaviour import Case, load_cases, set_for_labels
from training.runtime import pick_device

VALIDATION = "validation split of the run's config"


def validation_text(cfg: Any) -> str:
    """The validation text of a next_token run, rebuilt from its config (same file, same split)."""
    from training.data.for_config import text_splits

    text: str = text_splits(cfg).val
    return text


def validation_examples(cfg: Any) -> list[Any]:
    """The validation examples of a classify run, rebuilt from its config (same seeded split)."""
    from training.data.for_config import labelled_splits

    examples: list[Any] = labelled_splits(cfg).val
    return examples


def classify_inputs(
    cfg: Any, spec: Any, labels: list[str], examples: list[Any]
) -> tuple[list[list[int]], list[int]]:
    """Token ids (truncated as in training) and label indices of labelled examples."""
    from training.loop_classify import truncate
    from training.tokenization import UNK, encode_words

    unknown = sorted({e.label for e in examples} - set(labels))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the model's labels {labels}")
    dc = cfg.data
    unk = spec.tokenizer_json["model"]["vocab"][UNK]
    ids = encode_words(spec, [e.text for e in examples])
    xs = [truncate(x, dc.max_len, dc.keep, unk) for x in ids]
    return xs, [labels.index(e.label) for e in examples]


def evaluate_run(
    run_dir: Path,
    data: Path | None = None,
    *,
    dataset: str | None = None,
    split: str = "test",
    batch_size: int = 0,
    device: str = "auto",
    limit: int = 0,
) -> dict[str, Any]:
    dev = pick_device(device)
    ckpt = ck.load(run_dir, "cpu")
    cfg = config_from_dict(ckpt["config"])
    model = ck.rebuild_model(ckpt, dev)
    spec = ck.tokenizer_spec(ckpt)
    bs = batch_size or cfg.train.eval_batch_size
    if cfg.task == "classify":
        return _classify(cfg, ckpt, model, spec, data, dataset, split, bs, dev, limit)
    return _lm(cfg, model, spec, data, bs, dev, limit)


def _classify(
    cfg: Any,
    ckpt: dict[str, Any],
    model: Any,
    spec: Any,
    data: Path | None,
    dataset: str | None,
    split: str,
    bs: int,
    dev: torch.device,
    limit: int,
) -> dict[str, Any]:
    from training.data.sentiment import read_examples
    from training.loop_classify import evaluate_examples

    dc = cfg.data
    if data is None:
        examples = validation_examples(cfg)
        source = VALIDATION
    else:
        examples = read_examples(
            dataset or dc.dataset, data, dc.text_column, dc.label_column, split
        )
        source = str(data)
    if limit:
        examples = examples[:limit]
    labels: list[str] = ckpt["labels"]
    xs, ys = classify_inputs(cfg, spec, labels, examples)
    vocab = spec.tokenizer_json["model"]["vocab"]
    rep = evaluate_examples(model, xs, ys, labels, vocab["[PAD]"], bs, dev)
    out = {"task": "classify", "data": source, **rep}
    behaviour_set = set_for_labels(labels)
    if behaviour_set is not None:
        cases = load_cases(behaviour_set)
        probs = _probabilities(model, classify_inputs(cfg, spec, labels, cases)[0], vocab, dev)
        out["behaviour"] = behaviour_report(cases, probs, labels, behaviour_set.name)
    return out


@torch.no_grad()
def _probabilities(
    model: Any, xs: list[list[int]], vocab: dict[str, int], dev: torch.device
) -> list[list[float]]:
    """Label probabilities of each encoded row (one padded batch: behaviour sets are small)."""
    from training.loop_classify import collate

    model.eval()
    b = collate(xs, [0] * len(xs), vocab["[PAD]"]).to(dev)
    logits, _ = model(b.tokens, b.lengths)  # (B, C)
    probs: list[list[float]] = torch.softmax(logits.float(), -1).tolist()
    return probs


def behaviour_report(
    cases: Sequence[Case], probs: Sequence[Sequence[float]], labels: list[str], name: str
) -> dict[str, Any]:
    """Score a behavioural set: a case passes when the most probable label is its label.

    `probs[i]` are case i's label probabilities in the order of `labels`. Returns the set's name,
    the totals, per capability {passed, total} (in the set's order of first appearance) and every
    case with its prediction and the probability given to the expected label.
    """
    if len(probs) != len(cases):
        raise ValueError(f"{len(cases)} cases but {len(probs)} predictions")
    rows: list[dict[str, Any]] = []
    per: dict[str, dict[str, int]] = {}
    for case, p in zip(cases, probs, strict=True):
        predicted = labels[max(range(len(labels)), key=lambda k: p[k])]
        ok = predicted == case.label
        rows.append(
            {
                "capability": case.capability,
                "text": case.text,
                "label": case.label,
                "predicted": predicted,
                "p_expected": float(p[labels.index(case.label)]),
                "passed": ok,
            }
        )
        tally = per.setdefault(case.capability, {"passed": 0, "total": 0})
        tally["passed"] += ok
        tally["total"] += 1
    return {
        "set": name,
        "passed": sum(r["passed"] for r in rows),
        "total": len(rows),
        "capabilities": per,
        "cases": rows,
    }


def _lm(
    cfg: Any, model: Any, spec: Any, data: Path | None, bs: int, dev: torch.device, limit: int
) -> dict[str, Any]:
    from service.contract.tokenizers import CharTokenizer
    from training.data.io import read_text
    from training.loop_lm import evaluate_stream

    if data is None:
        text, source = validation_text(cfg), VALIDATION
    else:
        text, source = read_text(data), str(data)
    if limit:
        text = text[:limit]
    ids = torch.tensor(CharTokenizer.from_spec(spec).encode(text), dtype=torch.long)
    out = evaluate_stream(model, ids, bs, cfg.train.seq_len, dev)
    return {
        "task": "next_token",
        "data": source,
        "characters": len(text),
        "nats_per_char": out["loss"],
        "bits_per_char": out["bpc"],
        "perplexity": out["ppl"],
    }


def format_report(rep: dict[str, Any]) -> str:
    if rep["task"] == "next_token":
        return (
            f"{rep['data']}: {rep['characters']:,} chars  loss {rep['nats_per_char']:.4f} nats/char  "
            f"{rep['bits_per_char']:.4f} bits/char  perplexity {rep['perplexity']:.3f}"
        )
    labels = rep["labels"]
    w = max(len(x) for x in labels) + 2
    lines = [
        f"{rep['data']}: {rep['examples']:,} examples  accuracy {rep['accuracy']:.4f}  "
        f"macro F1 {rep['f1_macro']:.4f}  loss {rep['loss']:.4f}",
        "confusion (rows = truth, columns = prediction):",
        " " * w + "".join(f"{x:>{w}}" for x in labels),
    ]
    for lab, row in zip(labels, rep["confusion"], strict=True):
        lines.append(f"{lab:<{w}}" + "".join(f"{v:>{w}}" for v in row))
    if "behaviour" in rep:
        lines += format_behaviour(rep["behaviour"])
    return "\n".join(lines)


def format_behaviour(b: dict[str, Any]) -> list[str]:
    """Report lines: the pass count per capability, then each failed sentence."""
    per = "  ".join(f"{cap} {t['passed']}/{t['total']}" for cap, t in b["capabilities"].items())
    lines = [f"behaviour ({b['set']}): {b['passed']}/{b['total']} passed  {per}"]
    for r in b["cases"]:
        if not r["passed"]:
            lines.append(
                f"  FAIL {r['capability']}: {r['text']!r} -> {r['predicted']} "
                f"(p({r['label']}) {r['p_expected']:.2f})"
            )
    return lines
