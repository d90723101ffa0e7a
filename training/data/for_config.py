"""A run's data, loaded from its config: the same files and the same seeded split for training
(`train.build_task`) and for everything that rebuilds the validation data later (`evaluate`,
the variant checks of an export)."""

from __future__ import annotations

from typing import Any


def text_splits(cfg: Any) -> Any:
    """A next_token run's text, split as configured (`.train`, `.val`)."""
    from training.data.text import load_text

    dc = cfg.data
    val_path = cfg.resolve(dc.val_path) if dc.val_path else None
    return load_text(cfg.resolve(dc.path), dc.val_fraction, val_path, dc.limit)


def labelled_splits(cfg: Any) -> Any:
    """A classify run's labelled examples, split as configured (`.train`, `.val`)."""
    from training.data.sentiment import load_labelled

    dc = cfg.data
    val_path = cfg.resolve(dc.val_path) if dc.val_path else None
    return load_labelled(
        dc.dataset,
        cfg.resolve(dc.path),
        val_path=val_path,
        val_fraction=dc.val_fraction,
        split_seed=dc.split_seed,
        text_column=dc.text_column,
        label_column=dc.label_column,
        limit=dc.limit,
    )
