"""Plain text for the character language model (Tiny Shakespeare and any UTF-8 file, gz or not)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from training.data.io import read_text
from training.data.splits import tail_split


@dataclass
class TextData:
    train: str
    val: str
    source: str  # a description for the checkpoint's `dataset` field


def load_text(
    path: Path, val_fraction: float = 0.1, val_path: Path | None = None, limit: int = 0
) -> TextData:
    """Train/val text. Without `val_path`, nanoGPT's split: first 90 % train, last 10 % val
    (Tiny Shakespeare: 1,003,854 / 111,540 characters), so our losses compare with published ones.
    `limit` keeps only the first N characters of the file before splitting (smoke tests)."""
    if path.is_dir():
        path = path / "input.txt"
    text = read_text(path)
    if limit:
        text = text[:limit]
    if val_path is not None:
        val = read_text(val_path)
        if limit:
            val = val[: max(1, int(limit * val_fraction))]
        return TextData(text, val, f"{path} (val: {val_path})")
    train, val = tail_split(text, val_fraction)
    if not train or not val:
        raise ValueError(f"{path}: too little text to split ({len(text)} characters)")
    return TextData(
        train, val, f"{path} (first {1 - val_fraction:.0%} train / last {val_fraction:.0%} val)"
    )
