"""A models folder with several versions of one model, each a real exported fixture graph: version
N of `lm` is `tiny-char-lstm` or `tiny-char-gru` (same vocabulary, different graphs, so a session
on the wrong version gives different numbers)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tests.conftest import FIXTURE_MODELS

NAME = "lm"
GRAPHS = {"lstm": "tiny-char-lstm", "gru": "tiny-char-gru"}


def add_version(root: Path, version: str, graph: str = "lstm") -> Path:
    """`root/lm/<version>/`: the fixture graph `graph`, its manifest renamed to `lm`."""
    dst = root / NAME / version
    shutil.copytree(FIXTURE_MODELS / GRAPHS[graph], dst)
    man = json.loads((dst / "manifest.json").read_text())
    man["name"] = NAME
    (dst / "manifest.json").write_text(json.dumps(man))
    return dst


def write_settings(root: Path, settings: dict[str, Any]) -> None:
    (root / NAME).mkdir(parents=True, exist_ok=True)
    (root / NAME / "settings.json").write_text(json.dumps(settings))
