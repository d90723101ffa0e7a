"""Stop strings decided over the batch: the automaton ends a row at exactly the token where the
text matcher finds a stop string, naming the same one, for any tokens (multi-character ones
included) and any stop lists; the batch's table keeps each row on its own automaton as rows join
and leave."""

from __future__ import annotations

import numpy as np

from service.engine.stops import StopAutomata, StopTable, build
from service.protocol.stop_text import StopMatcher

# characters and multi-character tokens (a word vocabulary's, with a leading space), an empty
# token, and characters no stop string holds
VOCAB = ["a", "b", "c", "\n", " ", "ab", "ba", "bc", " the", "xyz", "", "aab", "q"]


def _matcher_end(stops: list[str], tokens: list[int]) -> tuple[int, str] | None:
    """(index of the token that completes a stop, which stop) by the text matcher."""
    m = StopMatcher(stops)
    for i, t in enumerate(tokens):
        m.push(VOCAB[t])
        if m.matched is not None:
            return i, m.matched
    return None


def _automaton_end(stops: list[str], tokens: list[int]) -> tuple[int, str] | None:
    a = build(stops, VOCAB)
    state = 0
    for i, t in enumerate(tokens):
        hit = int(a.hit[state, t])
        if hit:
            return i, a.stops[hit - 1]
        state = int(a.next[state, t])
    return None


def _stop_lists(rng: np.random.Generator) -> list[str]:
    alphabet = "ab c\nt"
    return [
        "".join(rng.choice(list(alphabet), size=rng.integers(1, 4)))
        for _ in range(rng.integers(1, 4))
    ]


def test_the_automaton_ends_where_the_text_matcher_finds_a_stop() -> None:
    rng = np.random.default_rng(7)
    ended = 0
    for _ in range(600):
        stops = _stop_lists(rng)
        tokens = rng.integers(0, len(VOCAB), size=40).tolist()
        want = _matcher_end(stops, tokens)
        assert _automaton_end(stops, tokens) == want, (stops, tokens)
        ended += want is not None
    assert ended > 300  # the cases exercise both endings


def test_ties_and_overlaps_name_the_stop_the_matcher_names() -> None:
    # "aab" completes both "ab" and "aab" in one token: the earliest occurrence wins; on a tie,
    # the first in the request's list
    for stops, tokens in [
        (["ab", "aab"], [11]),
        (["aab", "ab"], [11]),
        (["b", "ab"], [0, 1]),
        (["bc", "c"], [5, 2]),
        (["x", "ab"], [5]),
    ]:
        assert _automaton_end(stops, tokens) == _matcher_end(stops, tokens), stops


def test_only_empty_stop_strings_mean_no_automaton() -> None:
    automata = StopAutomata(VOCAB)
    assert automata.get(("",)) is None and automata.get(()) is None
    a = automata.get(("ab",))
    assert a is not None and automata.get(("ab",)) is a  # built once per stop list


def test_a_batchs_rows_each_follow_their_own_automaton_as_rows_join_and_leave() -> None:
    rng = np.random.default_rng(3)
    automata = StopAutomata(VOCAB, keep=4)  # evicted automata still serve the rows using them
    table = StopTable(len(VOCAB))
    rows: list[tuple[list[str] | None, list[int]]] = []  # (stops, tokens so far) per batch row
    for _ in range(200):
        if rng.random() < 0.3 or not rows:  # one to three rows join
            new = [
                None if rng.random() < 0.3 else _stop_lists(rng) for _ in range(rng.integers(1, 4))
            ]
            table.join([None if s is None else automata.get(tuple(s)) for s in new])
            rows += [(s, []) for s in new]
        tokens = rng.integers(0, len(VOCAB), size=len(rows))
        hits = table.step(tokens)
        keep = np.ones(len(rows), bool)
        for i, ((stops, seen), t) in enumerate(zip(rows, tokens.tolist(), strict=True)):
            seen.append(t)
            want = _matcher_end(stops, seen) if stops else None
            if want is None:
                assert hits[i] == 0
            else:  # it ends at this token, on this stop string, and leaves the batch
                assert want[0] == len(seen) - 1 and table.stop_of(i, int(hits[i])) == want[1]
                keep[i] = False
        if rng.random() < 0.2:  # some leave for other reasons (length, a cancelled client)
            keep &= rng.random(len(rows)) < 0.7
        table.keep(np.flatnonzero(keep))
        rows = [r for r, k in zip(rows, keep.tolist(), strict=True) if k]
    assert table.next.shape[0] < 2_000  # automata of rows gone are dropped, not kept forever
