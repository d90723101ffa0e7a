"""Tiny, briefly trained models for the service's tests: `python -m training.export.fixtures`.

Each is trained for a fixed number of seeded steps (a few seconds on one CPU thread), so the
output is deterministic on a given torch build, and exported by the same code as real models.
They are KB-sized and go to `tests/fixtures/models/<name>/{model.onnx, manifest.json}`.
Regenerate only when the contract changes: service tests may pin their behaviour.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from service.contract import (
    CharTokenizer,
    CharTokenizerSpec,
    SamplingDefaults,
    TrainingSummary,
    WordTokenizer,
    WordTokenizerSpec,
)
from training.export.run import export_model
from training.model import ModelConfig, RNNModel
from training.model.config import CellName, Pooling, TaskName
from training.tokenization import build_char_tokenizer, build_word_tokenizer

DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"
OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "models"
CHAR_TEXT_CHARS = 20_000
SST2_ROWS = 6_000
LABELS = ["negative", "positive"]


@dataclass(frozen=True)
class Recipe:
    name: str
    task: TaskName
    cell: CellName
    hidden: int
    layers: int = 1
    pooling: Pooling = "last"
    steps: int = 200
    seed: int = 0


RECIPES = [
    Recipe("tiny-char-lstm", "next_token", "lstm", hidden=24, layers=2),
    Recipe("tiny-char-gru", "next_token", "gru", hidden=32),
    Recipe("tiny-char-rnn", "next_token", "rnn", hidden=32),
    Recipe("tiny-char-peephole", "next_token", "peephole_lstm", hidden=32),
    Recipe("tiny-sentiment-lstm", "classify", "lstm", hidden=24),
    Recipe("tiny-sentiment-gru", "classify", "gru", hidden=24, pooling="max"),
]


def _train_char(r: Recipe, out: Path) -> None:
    text = (DATASETS / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    text = text[:CHAR_TEXT_CHARS]
    spec = build_char_tokenizer(text)
    ids = torch.tensor(CharTokenizer.from_spec(spec).encode(text))  # (N,)
    split = int(0.9 * len(ids))
    train, val = ids[:split], ids[split:]
    cfg = ModelConfig(
        task="next_token",
        cell=r.cell,
        vocab_size=len(spec.vocab),
        embed_dim=16,
        hidden_size=r.hidden,
        num_layers=r.layers,
    )
    model = RNNModel(cfg)
    gen = torch.Generator().manual_seed(r.seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    T, B = 48, 32
    t0 = time.perf_counter()
    for _ in range(r.steps):
        starts = torch.randint(0, len(train) - T - 1, (B,), generator=gen)
        x = torch.stack([train[s : s + T] for s in starts])  # (B, T)
        y = torch.stack([train[s + 1 : s + T + 1] for s in starts])  # (B, T)
        logits, _ = model(x)  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    seconds = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        logits, _ = model(val[None, :-1])
        val_loss = F.cross_entropy(logits[0], val[1:]).item()
    _export(
        r,
        model,
        cfg,
        spec,
        None,
        out,
        {"val_loss_nats": val_loss},
        seconds,
        f"tinyshakespeare/input.txt[:{CHAR_TEXT_CHARS}] (90/10 split)",
    )


def _load_sst2(rows: int) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    with gzip.open(DATASETS / "sst2" / "train.jsonl.gz", "rt", encoding="utf-8") as f:
        for line, _ in zip(f, range(rows), strict=False):
            rec = json.loads(line)
            texts.append(rec["text"])
            labels.append(LABELS.index(rec["label"]))
    return texts, labels


def _pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([max(1, len(s)) for s in seqs])
    tokens = torch.full((len(seqs), int(lengths.max())), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return tokens, lengths  # (B, T), (B,)


def _train_sentiment(r: Recipe, out: Path) -> None:
    texts, labels = _load_sst2(SST2_ROWS)
    spec = build_word_tokenizer(texts[:5000], vocab_size=1000, min_freq=2)
    tok = WordTokenizer.from_spec(spec)
    data = [(tok.encode(t) or [tok.unk_id], y) for t, y in zip(texts, labels, strict=True)]
    train, val = data[:5000], data[5000:]
    cfg = ModelConfig(
        task="classify",
        cell=r.cell,
        vocab_size=tok.vocab_size,
        embed_dim=16,
        hidden_size=r.hidden,
        num_layers=r.layers,
        num_classes=2,
        pooling=r.pooling,
        pad_id=tok.pad_id,
    )
    model = RNNModel(cfg)
    gen = torch.Generator().manual_seed(r.seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    t0 = time.perf_counter()
    for _ in range(r.steps):
        idx = torch.randint(0, len(train), (32,), generator=gen).tolist()
        tokens, lengths = _pad([train[i][0] for i in idx], tok.pad_id)
        y = torch.tensor([train[i][1] for i in idx])
        logits, _ = model(tokens, lengths)  # (B, 2)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    seconds = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        tokens, lengths = _pad([s for s, _ in val], tok.pad_id)
        pred = model(tokens, lengths)[0].argmax(1)
        acc = (pred == torch.tensor([y for _, y in val])).float().mean().item()
    _export(
        r,
        model,
        cfg,
        spec,
        LABELS,
        out,
        {"val_accuracy": acc},
        seconds,
        f"sst2/train.jsonl.gz rows 0-{SST2_ROWS} (first 5000 train, rest validation)",
    )


def _export(
    r: Recipe,
    model: RNNModel,
    cfg: ModelConfig,
    spec: CharTokenizerSpec | WordTokenizerSpec,
    labels: list[str] | None,
    out: Path,
    metrics: dict[str, float],
    seconds: float,
    dataset: str,
) -> None:
    summary = TrainingSummary(
        config={"recipe": r.__dict__, "optimizer": "adam", "lr": 1e-2, "clip_norm": 1.0},
        dataset=dataset,
        metrics=metrics,
        git_commit=None,  # fixtures stay byte-stable across commits; the recipe is in this module
        device="cpu",
        train_seconds=None,  # likewise: wall time would change the bytes on every run
    )
    sampling = SamplingDefaults(temperature=0.8, max_tokens=100) if labels is None else None
    m = export_model(model, cfg, spec, labels, out / r.name, r.name, summary, sampling=sampling)
    size = (out / r.name / m.onnx_file).stat().st_size
    print(
        f"{r.name}: {metrics} trained {seconds:.1f}s, {size / 1024:.0f} KiB, {m.training.model_dump()['export_checks']}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("names", nargs="*", help="only these fixtures (default: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for r in RECIPES:
        if args.names and r.name not in args.names:
            continue
        torch.manual_seed(r.seed)
        (_train_char if r.task == "next_token" else _train_sentiment)(r, args.out)


if __name__ == "__main__":
    main()
