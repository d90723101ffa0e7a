"""Live progress (tqdm) and the per-run `metrics.jsonl` log.

Bars appear only for a person at a terminal (`train.progress = "auto"`): piped output and CI
(`CI` set) get a plain line per evaluation instead, so logs stay readable.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from training.runtime import interactive


class MetricsLog:
    """Append-only JSON lines: {"kind": "train"|"val", "step": ..., ...}; flushed per record."""

    def __init__(self, path: Path, history: list[dict[str, Any]] | None = None) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = list(history or [])
        # (re)write what is known: on resume, records past the resumed step are dropped
        path.write_text("".join(json.dumps(r) + "\n" for r in self.records), encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


class Progress:
    def __init__(self, total: int, initial: int, mode: str, desc: str) -> None:
        show = mode == "on" or (mode == "auto" and interactive())
        self.bar: Any = None
        if show:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=True)
        self._t = time.perf_counter()
        self._tokens = 0

    def update(self, tokens: int) -> None:
        """Advance one step that consumed `tokens` tokens."""
        self._tokens += tokens
        if self.bar is not None:
            self.bar.update(1)

    def rate(self) -> float:
        """Tokens per second since the last `reset_rate` (train steps only)."""
        dt = time.perf_counter() - self._t
        return self._tokens / dt if dt > 0 else 0.0

    def reset_rate(self) -> None:
        self._t, self._tokens = time.perf_counter(), 0

    def postfix(self, **values: float | str) -> None:
        if self.bar is not None:
            self.bar.set_postfix(
                {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in values.items()},
                refresh=False,
            )

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
