"""The benchmark models, written to the gitignored `bench/.out/models/` by the suite itself.

* `bench-char-lstm`: a 2x256 LSTM character model (Tiny Shakespeare vocabulary), exported by the
  project's own `training.export.export_model` from a seeded, untrained `RNNModel`: speed does not
  depend on the weights, and the export is verified (parity, chunked == whole) like any model.
* the classifier: the shipped `models/sentiment-lstm` when present, else the test fixture
  `tests/fixtures/models/tiny-sentiment-lstm`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / ".out" / "models"
CHAR = "bench-char-lstm"
SHAKESPEARE = REPO.parent / "shared" / "datasets" / "tinyshakespeare" / "input.txt"


def classifier_source() -> Path:
    shipped = REPO / "models" / "sentiment-lstm"
    if shipped.is_dir() and any(shipped.rglob("manifest.json")):
        return shipped
    return REPO / "tests" / "fixtures" / "models" / "tiny-sentiment-lstm"


def artifact_dir(path: Path) -> Path:
    """`<name>/` or the highest numeric `<name>/<version>/` holding a manifest."""
    if (path / "manifest.json").is_file():
        return path
    versions = sorted(
        (p for p in path.iterdir() if (p / "manifest.json").is_file()),
        key=lambda p: (int(p.name) if p.name.isdigit() else -1, p.name),
    )
    return versions[-1]


def export_char_model(hidden: int = 256, layers: int = 2) -> Path:
    """Export (once) the char LSTM; returns its artifact folder."""
    out = OUT / CHAR
    if (out / "manifest.json").is_file():
        return out
    import torch  # the suite's parent process runs in the project venv (training extra)

    from service.contract import SamplingDefaults
    from training.export.run import export_model
    from training.model import ModelConfig, RNNModel
    from training.tokenization import build_char_tokenizer

    spec = build_char_tokenizer(SHAKESPEARE.read_text(encoding="utf-8"))
    cfg = ModelConfig(
        task="next_token",
        cell="lstm",
        vocab_size=len(spec.vocab),
        embed_dim=64,
        hidden_size=hidden,
        num_layers=layers,
    )
    torch.manual_seed(0)
    model = RNNModel(cfg)
    sampling = SamplingDefaults(temperature=1.0, max_tokens=100)
    export_model(model, cfg, spec, None, out, CHAR, sampling=sampling)
    return out


def models_dir() -> Path:
    """A models folder holding the char model and the classifier (what our server loads)."""
    export_char_model()
    src = artifact_dir(classifier_source())
    dst = OUT / "classifier"
    if not (dst / "manifest.json").is_file() or (
        (dst / "manifest.json").read_bytes() != (src / "manifest.json").read_bytes()
    ):
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
    return OUT


def classifier_name() -> str:
    import json

    return str(json.loads((OUT / "classifier" / "manifest.json").read_text())["name"])
