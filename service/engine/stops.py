"""Stop strings as arrays: which token ends a row, decided for the whole decode batch in two
numpy gathers a step, so a row with stop strings needs no Python (and no text) in the engine.

A `StopAutomaton` is `protocol.stop_text.StopMatcher` precomputed: its state is the text the matcher holds
back (the longest suffix of the output that is a proper prefix of a stop string), and for every
(state, token) it stores the state after the token's text and which stop string, if any, the
token completes, chosen exactly as the matcher chooses (the earliest occurrence; on a tie, the
first in the request's list). The engine ends a row at the token the matcher would; the text
itself (what is held back and released) is matched by whoever decodes the tokens: the worker
for a routed stream, the engine for its own. Both run the same `StopMatcher`, so they agree.

`StopTable` holds the automata of the rows of one decode batch stacked in one pair of arrays
(each at its own offset; row 0 is the automaton of a row without stop strings, which never
moves), and each row's offset and state.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class StopAutomaton:
    stops: tuple[str, ...]  # the non-empty stop strings, in the request's order
    next: np.ndarray  # (S, K) int32: the state after the token (0 once a stop is complete)
    hit: np.ndarray  # (S, K) int16: 1 + index of the stop string the token completes, 0 none

    @property
    def states(self) -> int:
        return int(self.next.shape[0])


def build(stops: Sequence[str], vocab: Sequence[str]) -> StopAutomaton:
    """The automaton of `stops` over a vocabulary (token id -> text).

    Only tokens whose text holds a character of some stop string (or is empty) can move it
    off its first state or complete a stop; every other token sends every state to state 0
    without a hit, so only the former are simulated: with a character vocabulary and a stop of
    a few characters that is a few tokens per state."""
    stops = tuple(s for s in stops if s)
    k = len(vocab)
    chars = set("".join(stops))
    moving = [t for t, text in enumerate(vocab) if not text or not chars.isdisjoint(text)]
    prefixes = {s[:n] for s in stops for n in range(1, len(s))}
    longest = max((len(s) for s in stops), default=1)
    index: dict[str, int] = {"": 0}
    order = [""]
    nxt: list[np.ndarray] = []
    hit: list[np.ndarray] = []
    i = 0
    while i < len(order):  # breadth first over the held-back texts that can occur
        held = order[i]
        row_next = np.zeros(k, np.int32)
        row_hit = np.zeros(k, np.int16)
        for t in moving:
            buf = held + vocab[t]
            found = _first_stop(stops, buf)
            if found is not None:
                row_hit[t] = found + 1
                continue
            rest = _held(buf, prefixes, longest)
            j = index.get(rest)
            if j is None:
                j = index[rest] = len(order)
                order.append(rest)
            row_next[t] = j
        nxt.append(row_next)
        hit.append(row_hit)
        i += 1
    return StopAutomaton(stops, np.stack(nxt), np.stack(hit))


def _first_stop(stops: tuple[str, ...], buf: str) -> int | None:
    """The stop `StopMatcher.push` reports for `buf`: the earliest found, the first on a tie."""
    best: tuple[int, int] | None = None
    for j, s in enumerate(stops):
        at = buf.find(s)
        if at >= 0 and (best is None or at < best[0]):
            best = (at, j)
    return None if best is None else best[1]


def _held(buf: str, prefixes: set[str], longest: int) -> str:
    """What `StopMatcher.push` holds back of `buf` (no stop in it): its longest suffix that is a
    proper prefix of a stop string."""
    for n in range(min(longest - 1, len(buf)), 0, -1):
        if buf[-n:] in prefixes:
            return buf[-n:]
    return ""


class StopAutomata:
    """One model's automata by stop list, the most recently used kept (a request's stop strings
    are bounded in number and length; most requests repeat a handful of lists)."""

    def __init__(self, vocab: Sequence[str], keep: int = 256) -> None:
        self.vocab = vocab
        self.keep = keep
        self._cache: OrderedDict[tuple[str, ...], StopAutomaton] = OrderedDict()

    def get(self, stops: Sequence[str]) -> StopAutomaton | None:
        """None when there is no non-empty stop string."""
        key = tuple(s for s in stops if s)
        if not key:
            return None
        a = self._cache.get(key)
        if a is None:
            a = self._cache[key] = build(key, self.vocab)
            if len(self._cache) > self.keep:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return a


class StopTable:
    """The stop automata of a decode batch's rows, stacked, and each row's place in them."""

    def __init__(self, k: int) -> None:
        self.k = k
        self._at: dict[int, StopAutomaton] = {}  # first table row -> automaton
        self._offsets: dict[int, int] = {}  # id(automaton) -> its first table row
        self.next = np.zeros((1, k), np.int32)  # table row 0: no stop strings
        self.hit = np.zeros((1, k), np.int16)
        self.offset = np.zeros(0, np.int32)  # (n,) each batch row's automaton
        self.state = np.zeros(0, np.int32)  # (n,) and its state there
        self.active = False  # some row has stop strings

    def join(self, automata: Sequence[StopAutomaton | None]) -> None:
        """Append rows (in their first state)."""
        offsets = np.zeros(len(automata), np.int32)
        for i, a in enumerate(automata):
            if a is not None:
                offsets[i] = self._place(a)
        self.offset = np.concatenate([self.offset, offsets])
        self.state = np.concatenate([self.state, np.zeros(len(automata), np.int32)])
        self.active = bool(self.offset.any())

    def _place(self, a: StopAutomaton) -> int:
        off = self._offsets.get(id(a))
        if off is None:
            off = self._offsets[id(a)] = self.next.shape[0]
            self._at[off] = a
            self.next = np.concatenate([self.next, a.next])
            self.hit = np.concatenate([self.hit, a.hit])
        return off

    def keep(self, idx: np.ndarray) -> None:
        self.offset, self.state = self.offset[idx], self.state[idx]
        self.active = bool(self.offset.any())
        used = set(np.unique(self.offset).tolist()) - {0}
        if len(self._at) > 2 * len(used) + 4:  # mostly automata of rows gone: restack
            self._restack(used)

    def _restack(self, used: set[int]) -> None:
        old, offset, state = self._at, self.offset, self.state
        remap = np.zeros(self.next.shape[0], np.int32)
        self.__init__(self.k)  # type: ignore[misc]
        for off in sorted(used):
            remap[off] = self._place(old[off])
        self.offset, self.state = remap[offset], state
        self.active = bool(self.offset.any())

    def clear(self) -> None:
        self.__init__(self.k)  # type: ignore[misc]

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Advance every row by its token; (n,) int16: 1 + the stop string it completed, or 0."""
        at = self.offset + self.state
        hits: np.ndarray = self.hit[at, tokens]
        self.state = self.next[at, tokens]
        return hits

    def stop_of(self, row: int, hit: int) -> str:
        """The stop string `hit` (from `step`) names for `row`."""
        return self._at[int(self.offset[row])].stops[hit - 1]
