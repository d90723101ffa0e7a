from __future__ import annotations

import numpy as np
import pytest

from service.engine.sampling import (
    GREEDY_BELOW,
    all_plain,
    inverse_temperature,
    sample,
    sample_plain,
)
from service.protocol.softmax import log_softmax, softmax


def _logits(b: int = 4, k: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((b, k)).astype(np.float32) * 3


def _run(logits: np.ndarray, t: float, k: int, p: float, u: np.ndarray) -> np.ndarray:
    b = logits.shape[0]
    return sample(logits, np.full(b, t), np.full(b, k), np.full(b, p), u)


def test_greedy_and_degenerate_settings_are_argmax() -> None:
    lg = _logits()
    u = np.random.default_rng(1).random(4)
    best = lg.argmax(-1)
    assert (_run(lg, 0.0, 0, 1.0, u) == best).all()
    assert (_run(lg, 1.0, 1, 1.0, u) == best).all()  # top-k 1
    assert (_run(lg, 1.0, 0, 1e-9, u) == best).all()  # tiny top-p keeps the best token only


@pytest.mark.parametrize("t", [1e-38, 1e-45, 5e-324, GREEDY_BELOW / 2])
@pytest.mark.parametrize(("k", "p"), [(0, 1.0), (3, 1.0), (0, 0.9)])
def test_tiny_temperatures_are_greedy_on_every_path(t: float, k: int, p: float) -> None:
    """1/t of a tiny temperature overflows float32 (inf, then NaN), which always drew token 0."""
    lg = _logits(b=64)
    u = np.random.default_rng(3).random(64)
    assert (_run(lg, t, k, p, u) == lg.argmax(-1)).all()
    temps = np.full(64, t)
    assert not all_plain(temps, np.zeros(64, int), np.ones(64), lg.shape[1])
    assert (inverse_temperature(temps) == 0).all()  # finite, never inf


def test_temperatures_at_the_bound_still_sample() -> None:
    lg = np.zeros((1, 10), np.float32)  # a flat row: a sampled token depends on the draw
    u = np.array([0.95])
    assert sample_plain(lg, inverse_temperature(np.array([GREEDY_BELOW])), u)[0] == 9
    assert _run(lg, GREEDY_BELOW, 0, 1.0, u)[0] == 9


def test_top_k_never_leaves_the_k_best() -> None:
    lg = _logits(b=256, k=20)
    u = np.random.default_rng(2).random(256)
    out = _run(lg, 5.0, 3, 1.0, u)
    top3 = np.argsort(-lg, axis=-1)[:, :3]
    assert all(out[i] in top3[i] for i in range(256))


def test_top_p_keeps_the_smallest_prefix_reaching_p() -> None:
    lg = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], np.float32))
    seen = {int(_run(lg, 1.0, 0, 0.7, np.array([u]))[0]) for u in np.linspace(0, 0.999, 200)}
    assert seen == {0, 1}


def test_rows_use_their_own_parameters_and_frequencies_match() -> None:
    lg = np.log(np.array([[0.6, 0.4]] * 2, np.float32))
    n = 4000
    rng = np.random.default_rng(3)
    counts = np.zeros(2)
    for _ in range(n):
        out = sample(lg, np.array([1.0, 0.0]), np.zeros(2, int), np.ones(2), rng.random(2))
        assert out[1] == 0  # the greedy row
        counts[out[0]] += 1
    assert abs(counts[0] / n - 0.6) < 0.03


def test_same_seed_same_draws() -> None:
    lg = _logits(b=1, k=30)
    a = [int(_run(lg, 1.0, 0, 1.0, np.array([r]))[0]) for r in np.random.default_rng(7).random(50)]
    b = [int(_run(lg, 1.0, 0, 1.0, np.array([r]))[0]) for r in np.random.default_rng(7).random(50)]
    assert a == b


def test_softmax_is_stable() -> None:
    p = softmax(np.array([1000.0, 0.0, -1000.0]))
    assert np.isclose(p.sum(), 1) and p[0] > 0.999
    assert np.isfinite(log_softmax(np.array([1e4, -1e4]))).all()


def test_counter_uniforms_are_a_pure_function_of_seed_and_index() -> None:
    from service.engine.sampling import counter_uniforms

    seeds = np.array([0, 1, 2**63 - 1, 42], np.uint64)
    idx = np.array([0, 0, 5, 7], np.uint64)
    u = counter_uniforms(seeds, idx)
    # each row alone gives the same draw as in the batch (batch composition never matters)
    alone = [counter_uniforms(seeds[i : i + 1], idx[i : i + 1])[0] for i in range(4)]
    assert u.tolist() == alone
    assert len(set(u.tolist())) == 4 and ((u >= 0) & (u < 1)).all()


def test_counter_uniforms_are_uniform_and_uncorrelated() -> None:
    from service.engine.sampling import counter_uniforms

    n = 200_000
    # one seed over many indices, and many neighbouring seeds at one index
    for seeds, idx in (
        (np.full(n, 7, np.uint64), np.arange(n, dtype=np.uint64)),
        (np.arange(n, dtype=np.uint64), np.zeros(n, np.uint64)),
    ):
        u = counter_uniforms(seeds, idx)
        hist = np.histogram(u, bins=20, range=(0, 1))[0] / n
        assert np.abs(hist - 0.05).max() < 0.003  # ~6 sigma of a binomial bin
        assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01


def test_all_plain_batches_take_the_plain_path_with_the_same_tokens() -> None:
    from service.engine.sampling import all_plain, inverse_temperature, sample_plain

    lg = _logits(b=64, k=30)
    u = np.random.default_rng(5).random(64)
    t, k, p = np.full(64, 0.8), np.zeros(64, np.int64), np.ones(64)
    assert all_plain(t, k, p, 30)
    assert (sample_plain(lg, inverse_temperature(t), u) == sample(lg, t, k, p, u)).all()
    assert not all_plain(np.r_[t[:-1], 0.0], k, p, 30)  # a greedy row
    assert not all_plain(t, np.r_[k[:-1], 5], p, 30)  # a top-k row
    assert all_plain(t, np.r_[k[:-1], 30], p, 30)  # top-k = K filters nothing
    assert not all_plain(t, k, np.r_[p[:-1], 0.9], 30)  # a top-p row


def test_block_draws_are_the_per_step_draws_through_joins_and_leaves() -> None:
    """`Draws` computes a block of steps at once; every step's draws must still be exactly
    counter_uniforms(seed, tokens sampled so far), whatever joins or leaves, and when."""
    from service.engine.holes import order, plan
    from service.engine.sampling import Draws, counter_uniforms

    rng = np.random.default_rng(11)
    draws = Draws(block=8)
    seeds = np.zeros(0, np.uint64)
    count = np.zeros(0, np.uint64)
    for _ in range(300):
        op = rng.integers(0, 4)
        if op == 0:  # some rows join, at zero tokens sampled
            n = int(rng.integers(1, 4))
            new = rng.integers(0, 2**63, n).astype(np.uint64)
            draws.join(new, np.zeros(n, np.uint64))
            seeds, count = np.r_[seeds, new], np.r_[count, np.zeros(n, np.uint64)]
        elif op == 1 and len(seeds):  # some rows leave
            holes, movers, m = plan(rng.random(len(seeds)) < 0.7)
            draws.leave(holes, movers, m)
            keep = order(holes, movers, m)
            seeds, count = seeds[keep], count[keep]
        else:  # a step
            u = draws.step(seeds, count)
            assert u.tolist() == counter_uniforms(seeds, count).tolist()
            count = count + np.uint64(1)
        if rng.random() < 0.01:
            draws.clear()
            seeds, count = seeds[:0], count[:0]
