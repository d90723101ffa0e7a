"""The decode batch: the generation streams that advance together, one row each, kept as batch
arrays (TGI-style keyed state cache): each step's outputs are the next step's inputs, joining
concatenates rows and leaving filters them. Owned by the model's engine thread."""

from __future__ import annotations

import numpy as np

from service.engine.prefill import StateRows
from service.engine.row_params import Rows
from service.engine.sampling import Draws, all_plain
from service.engine.stream import Stream


class DecodeBatch:
    def __init__(self, axes: list[int]) -> None:
        self.axes = axes  # each state tensor's batch axis
        # a tuple, replaced (never changed in place) when rows join or leave: a step hands it to
        # the loop with its tokens, and the next step's joins must not change what that sees
        self.streams: tuple[Stream, ...] = ()
        self.states: StateRows = []
        self.logits = np.zeros((0, 0), np.float32)  # (n, K): what the next step samples from
        self.rows = Rows.of([])
        self.draws = Draws()  # the rows' next random draws, computed a block at a time
        # derived when rows join or leave, not every step
        self.plain = True  # every row temperature-only (see sampling.all_plain)
        self.until_done = 0  # steps until the first row reaches its max_tokens
        self.fresh = False  # rows joined that have not sampled their first token

    def __len__(self) -> int:
        return len(self.streams)

    def join(self, new: list[Stream]) -> None:
        """Append `new` rows. Built aside and assigned together: if anything fails (it raises),
        the batch is unchanged and the new streams fail alone."""
        old = bool(self.streams)
        states = [
            np.concatenate([*([self.states[k]] if old else []), *(s.states[k] for s in new)], ax)
            for k, ax in enumerate(self.axes)
        ]
        logits = np.stack([s.logits for s in new])
        joined = Rows.of(new)
        rows = joined
        if old:
            logits = np.concatenate([self.logits, logits])
            rows = self.rows.concat(joined)
        self.states, self.logits, self.rows = states, logits, rows
        self.draws.join(joined.seeds, joined.count)
        self.streams = (*self.streams, *new)
        self.fresh = True
        self._changed()

    def keep(self, keep: np.ndarray) -> None:
        """Filter the batch to the rows where `keep` is True."""
        idx = np.flatnonzero(keep)
        self.streams = tuple(self.streams[i] for i in idx)
        self.states = [
            np.take(s, idx, axis=ax) for s, ax in zip(self.states, self.axes, strict=True)
        ]
        self.logits = self.logits[idx]
        self.rows = self.rows.take(idx)
        self.draws.keep(idx)
        self._changed()

    def clear(self) -> None:
        self.streams, self.states = (), []
        self.logits = np.zeros((0, 0), np.float32)
        self.rows = Rows.of([])
        self.draws.clear()
        self._changed()

    def advance(self, logits: np.ndarray, states: StateRows) -> None:
        """The step's outputs become the next step's inputs (no copies)."""
        self.logits, self.states = logits, states

    def _changed(self) -> None:
        r = self.rows
        self.plain = all_plain(r.temp, r.top_k, r.top_p, self.logits.shape[-1])
        self.until_done = int((r.max - r.count).min()) if len(r.count) else 0
