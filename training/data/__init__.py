"""Datasets: readers for the on-disk formats, deterministic splits, and `data download`."""

from __future__ import annotations

from training.data.sentiment import Example, LabelledData, load_labelled
from training.data.text import TextData, load_text

__all__ = ["Example", "LabelledData", "TextData", "load_labelled", "load_text"]
