"""File readers shared by the loaders: gzip is transparent (detected by magic bytes, not name)."""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

GZIP_MAGIC = b"\x1f\x8b"


def open_text(path: Path) -> io.TextIOBase:
    """Open a UTF-8 text file, decompressing on the fly when it is gzip (whatever its name)."""
    with path.open("rb") as f:
        magic = f.read(2)
    if magic == GZIP_MAGIC:
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open("r", encoding="utf-8", newline="")


def read_text(path: Path) -> str:
    with open_text(path) as f:
        return f.read()


def strip_gz(name: str) -> str:
    return name[:-3] if name.endswith(".gz") else name


def table_format(path: Path) -> str:
    """'jsonl' | 'csv' | 'tsv' from the file name (a trailing .gz ignored)."""
    suffix = Path(strip_gz(path.name)).suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix in (".tsv", ".tab"):
        return "tsv"
    if suffix == ".csv":
        return "csv"
    raise ValueError(f"{path}: unknown table format {suffix!r} (expected .jsonl, .csv or .tsv)")


def iter_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL / CSV / TSV file as dicts (CSV and TSV need a header line)."""
    fmt = table_format(path)
    with open_text(path) as f:
        if fmt == "jsonl":
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: invalid JSON: {e}") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{lineno}: expected a JSON object per line")
                yield row
        else:
            # GLUE's TSVs are not quoted: a '"' inside a sentence is a literal character.
            quoting = csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL
            yield from csv.DictReader(f, delimiter="\t" if fmt == "tsv" else ",", quoting=quoting)
