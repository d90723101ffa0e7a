"""The decode batch's per-row sampling parameters and counters, as (B,) arrays that join,
leave and are used together (one numpy call per field, never a loop over rows), and the
per-row path for the rows that need one (stop strings, logprobs)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from service.engine.sampling import inverse_temperature, logprob_info
from service.engine.stream import Stream
from service.protocol.messages import StepLogprob


@dataclass(frozen=True)
class Rows:
    """Per-row sampling parameters and counters of the decode batch, batch axis first."""

    temp: np.ndarray  # float64, below sampling.GREEDY_BELOW (0 included) = greedy
    top_k: np.ndarray  # int64, 0 = off
    top_p: np.ndarray  # float64, 1 = off
    seeds: np.ndarray  # uint64
    count: np.ndarray  # uint64, tokens sampled so far (the index of the next draw)
    max: np.ndarray  # uint64, max_tokens
    special: np.ndarray  # bool: text in the engine (logprobs; stop strings unrouted)

    @classmethod
    def of(cls, streams: Sequence[Stream]) -> Rows:
        p = [s.params for s in streams]
        return cls(
            np.array([x.temperature for x in p], np.float64),
            np.array([x.top_k for x in p], np.int64),  # raises OverflowError past int64
            np.array([x.top_p for x in p], np.float64),
            np.array([x.seed for x in p], np.uint64),
            np.zeros(len(p), np.uint64),
            np.array([x.max_tokens for x in p], np.uint64),
            np.array([s.wants_logprobs or (s.has_stops and not s.route) for s in streams], bool),
        )

    def concat(self, other: Rows) -> Rows:
        return Rows(
            *(np.concatenate([a, b]) for a, b in zip(self.arrays, other.arrays, strict=True))
        )

    def take(self, idx: np.ndarray) -> Rows:
        return Rows(*(a[idx] for a in self.arrays))

    @property
    def arrays(self) -> tuple[np.ndarray, ...]:
        return (self.temp, self.top_k, self.top_p, self.seeds, self.count, self.max, self.special)

    # derived once per batch change (a new Rows), not every step
    @cached_property
    def inv_temp(self) -> np.ndarray:
        """(B, 1) float32 1 / temp (0 where greedy), for sample_plain."""
        return inverse_temperature(self.temp)

    @cached_property
    def any_special(self) -> bool:
        """Some row needs the per-row path (once per batch change, not per step)."""
        return bool(self.special.any())


def special_rows(
    rows: Rows, streams: Sequence[Stream], logits: np.ndarray, tokens: np.ndarray, done: np.ndarray
) -> tuple[dict[int, str] | None, dict[int, StepLogprob] | None]:
    """The text of the rows that hold back their own stop strings (a stream without a route:
    its text is made here; `done` already says where a stop ends it, from the batch's
    `StopTable`, and the matcher agrees) and logprobs (against the step's input `logits`): per
    row, only where asked. (texts by row, logprobs by row)."""
    if not rows.any_special:
        return None, None
    texts: dict[int, str] = {}
    logprobs: dict[int, StepLogprob] = {}
    for i in np.flatnonzero(rows.special).tolist():
        s, tok = streams[i], int(tokens[i])
        if s.wants_logprobs:
            logprobs[i] = logprob_info(logits[i], tok, s.params.logprobs or 0, s.decode)
        if s.has_stops and s.route is None:
            texts[i] = s.stop_text(tok, bool(done[i]))
    return texts or None, logprobs or None
