"""The decode batch: rows join and leave as batch arrays, a failed join changes nothing, and what
the steps derive from the batch (plain sampling, the length countdown) follows it."""

from __future__ import annotations

import numpy as np
import pytest

from service.engine.batch import DecodeBatch
from service.engine.sampling import SamplingParams, counter_uniforms
from service.engine.state_place import HostState
from service.engine.stream import Stream

K = 5


def _stream(row: float, max_tokens: int = 10, top_k: int = 0, seed: int = 0) -> Stream:
    params = SamplingParams(1.0, top_k, 1.0, seed=seed, max_tokens=max_tokens)
    h = np.full((2, 1, 3), row, np.float32)  # (layers, batch, hidden): batch axis 1
    return Stream(params, np.full(K, row, np.float32), [h], str)


def test_rows_join_and_leave_as_batch_arrays() -> None:
    b = DecodeBatch(HostState([1]))
    b.join([_stream(0), _stream(1)])
    b.join([_stream(2)])
    assert len(b) == 3 and b.fresh
    assert b.states[0].shape == (2, 3, 3) and b.logits.shape == (3, K)
    assert b.states[0][0, :, 0].tolist() == [0, 1, 2] and b.logits[:, 0].tolist() == [0, 1, 2]
    b.keep(np.array([True, False, True]))
    assert [s.logits[0] for s in b.streams] == [0, 2]
    assert b.states[0][0, :, 0].tolist() == [0, 2] and b.rows.seeds.shape == (2,)
    b.clear()
    assert len(b) == 0 and b.states == [] and b.until_done == 0


def test_a_join_that_fails_leaves_the_batch_unchanged() -> None:
    b = DecodeBatch(HostState([1]))
    b.join([_stream(0)])
    bad = _stream(1)
    bad.states = [np.zeros((2, 1, 4), np.float32)]  # the wrong hidden size
    with pytest.raises(ValueError):
        b.join([bad])
    assert len(b) == 1 and b.states[0].shape == (2, 1, 3) and b.rows.seeds.shape == (1,)


def test_what_steps_derive_follows_joins_and_leaves() -> None:
    b = DecodeBatch(HostState([1]))
    b.join([_stream(0, max_tokens=7), _stream(1, max_tokens=3)])
    assert b.plain and b.until_done == 3
    b.rows.count[:] = 2  # two steps taken
    b.join([_stream(2, max_tokens=9, top_k=2)])  # a top-k row: not plain any more
    assert not b.plain and b.until_done == 1  # row 1 has one token left
    b.keep(np.array([True, False, False]))
    assert b.plain and b.until_done == 5


def test_draws_of_rows_joining_mid_block_are_their_own() -> None:
    b = DecodeBatch(HostState([1]))
    b.join([_stream(0, seed=11)])
    for _ in range(3):
        b.draws.step(b.rows.seeds, b.rows.count)
        b.rows.count[:] += 1
    b.join([_stream(1, seed=22)])
    u = b.draws.step(b.rows.seeds, b.rows.count)
    assert u.tolist() == counter_uniforms(b.rows.seeds, b.rows.count).tolist()


def test_rows_leaving_from_anywhere_leave_every_other_row_its_own_data() -> None:
    """Rows move into the holes the leaving ones left: each stream that stays keeps its own
    state, logits, parameters and draws, wherever its row went."""
    b = DecodeBatch(HostState([1]))
    streams = [_stream(float(i), seed=i) for i in range(9)]
    b.join(streams)
    b.draws.step(b.rows.seeds, b.rows.count)  # (a block of draws computed for every row)
    draws = {id(s): b.draws._u[i].copy() for i, s in enumerate(b.streams)}
    keep = np.array([True, False, True, False, True, True, False, True, True])
    b.keep(keep)
    assert {id(s) for s in b.streams} == {id(s) for s, k in zip(streams, keep, strict=True) if k}
    for i, s in enumerate(b.streams):
        row = s.logits[0]
        assert b.logits[i].tolist() == [row] * K
        assert b.states[0][:, i].tolist() == [[row] * 3] * 2
        assert int(b.rows.seeds[i]) == s.params.seed
        assert np.array_equal(b.draws._u[i], draws[id(s)])
