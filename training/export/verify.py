"""Checks an exported graph must pass before anything is written.

* parity with the torch model (logits and every state) over a grid of batch sizes and lengths,
  with random lengths per row and random incoming state;
* chunked == whole: a text fed in pieces with the state carried equals one pass;
* padded batch == each row alone (exact `sequence_lens` handling, final state included).

Every check returns the maximum absolute difference it saw; `verify_export` raises if any exceeds
the tolerance. The helpers are also what the tests use.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort
import torch

from service.contract.manifest import IOSpec
from training.model import RNNModel, StateSlot, state_layout

Arrays = list[np.ndarray]
TOLERANCE = 1e-5
GRID_BATCHES = (1, 3, 8)
GRID_LENGTHS = (1, 7, 64)


class ExportCheckError(RuntimeError):
    """The exported graph disagrees with the torch model (or with itself across chunkings)."""


def make_session(onnx_bytes: bytes, threads: int = 1) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])


def run_graph(
    sess: ort.InferenceSession, io: IOSpec, tokens: np.ndarray, lengths: np.ndarray, states: Arrays
) -> tuple[np.ndarray, Arrays]:
    feed = {io.tokens: tokens.astype(np.int64), io.lengths: lengths.astype(np.int32)}
    feed.update({s.input: x for s, x in zip(io.states, states, strict=True)})
    out = sess.run(io.output_names(), feed)
    return out[0], out[1:]


@torch.no_grad()
def run_torch(
    model: RNNModel, tokens: np.ndarray, lengths: np.ndarray, states: Arrays
) -> tuple[np.ndarray, Arrays]:
    """The torch model under the graph's contract: logits at each row's last real token."""
    model.eval()
    lens = torch.as_tensor(lengths, dtype=torch.long)
    out, new = model(
        torch.as_tensor(tokens, dtype=torch.long), lens, tuple(torch.as_tensor(s) for s in states)
    )
    if model.cfg.task == "next_token":
        out = out[torch.arange(out.shape[0]), lens - 1]  # (B, T, V) -> (B, V)
    return out.numpy(), [s.numpy() for s in new]


def random_states(model: RNNModel, batch: int, rng: np.random.Generator) -> Arrays:
    """Non-trivial incoming state (a fresh zero state would hide wrongly wired state inputs)."""
    out = []
    for slot in state_layout(model.cfg):
        x = rng.normal(0.0, 0.5, slot.shape(batch))
        out.append((np.abs(x) + 1.0 if slot.positive else x).astype(np.float32))
    return out


def as_used(slots: Sequence[StateSlot] | None, states: Arrays) -> Arrays:
    """States as the model uses them: a running sum divided by its count (the mean the head sees).

    A sum over T steps carries T steps' worth of float32 rounding; its mean carries one's.
    """
    if slots is None:
        return list(states)
    index = {slot.name: k for k, slot in enumerate(slots)}
    return [
        x / states[index[slot.divisor]] if slot.divisor else x
        for slot, x in zip(slots, states, strict=True)
    ]


def max_diff(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """Largest |a - b| / max(1, |b|): absolute error for values up to 1 (h, c, logits), relative
    error above (a mean pool's running sum reaches ~T, where float32's spacing alone exceeds 1e-5
    and any summation order differs by a few ulps)."""
    return max(
        float(np.max(np.abs(x - y) / np.maximum(1.0, np.abs(y)))) if x.size else 0.0
        for x, y in zip(a, b, strict=True)
    )


def check_parity(
    sess: ort.InferenceSession,
    model: RNNModel,
    io: IOSpec,
    rng: np.random.Generator,
    batches: Sequence[int] = GRID_BATCHES,
    lengths: Sequence[int] = GRID_LENGTHS,
) -> float:
    worst = 0.0
    V = model.cfg.vocab_size
    for B in batches:
        for T in lengths:
            tokens = rng.integers(0, V, (B, T))
            lens = rng.integers(1, T + 1, B)
            lens[0] = T  # at least one full-length row
            states = random_states(model, B, rng)
            got = run_graph(sess, io, tokens, lens, states)
            want = run_torch(model, tokens, lens, states)
            slots = state_layout(model.cfg)
            got_s, want_s = as_used(slots, got[1]), as_used(slots, want[1])
            worst = max(worst, max_diff([got[0], *got_s], [want[0], *want_s]))
    return worst


def chunked_diff(
    sess: ort.InferenceSession,
    io: IOSpec,
    tokens: np.ndarray,
    cuts: Sequence[int],
    states: Arrays,
    slots: Sequence[StateSlot] | None = None,
) -> float:
    """Feed tokens (B, T) whole, and in pieces split at `cuts`, carrying the state; compare."""
    B, T = tokens.shape
    full = np.full(B, T, np.int32)
    whole = run_graph(sess, io, tokens, full, states)
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < T)), T]
    carried = states
    logits = whole[0]
    for a, b in itertools.pairwise(bounds):
        logits, carried = run_graph(sess, io, tokens[:, a:b], np.full(B, b - a, np.int32), carried)
    return max_diff([logits, *as_used(slots, carried)], [whole[0], *as_used(slots, whole[1])])


def check_chunked(
    sess: ort.InferenceSession, model: RNNModel, io: IOSpec, rng: np.random.Generator
) -> float:
    worst = 0.0
    for _ in range(4):
        tokens = rng.integers(0, model.cfg.vocab_size, (3, 41))
        cuts = rng.integers(1, 41, rng.integers(1, 8)).tolist()
        states = random_states(model, 3, rng)
        worst = max(worst, chunked_diff(sess, io, tokens, cuts, states, state_layout(model.cfg)))
    return worst


def padded_diff(
    sess: ort.InferenceSession,
    io: IOSpec,
    tokens: np.ndarray,
    lengths: np.ndarray,
    states: Arrays,
) -> float:
    """A padded batch against each row run alone (its real tokens only, its own state)."""
    logits, new = run_graph(sess, io, tokens, lengths, states)
    worst = 0.0
    for b, n in enumerate(lengths.tolist()):
        row_states = [
            np.take(x, [b], axis=s.batch_axis) for s, x in zip(io.states, states, strict=True)
        ]
        one, one_new = run_graph(sess, io, tokens[b : b + 1, :n], np.array([n]), row_states)
        mine = [np.take(x, [b], axis=s.batch_axis) for s, x in zip(io.states, new, strict=True)]
        worst = max(worst, max_diff([one, *one_new], [logits[b : b + 1], *mine]))
    return worst


def check_padded(
    sess: ort.InferenceSession, model: RNNModel, io: IOSpec, rng: np.random.Generator
) -> float:
    lengths = np.array([13, 1, 5, 13, 9, 2], dtype=np.int32)
    tokens = rng.integers(0, model.cfg.vocab_size, (len(lengths), int(lengths.max())))
    for b, n in enumerate(lengths):
        tokens[b, n:] = model.cfg.pad_id
    return padded_diff(sess, io, tokens, lengths, random_states(model, len(lengths), rng))


def verify_export(
    onnx_bytes: bytes, model: RNNModel, io: IOSpec, tol: float = TOLERANCE, seed: int = 0
) -> dict[str, float]:
    """Run every check; raise `ExportCheckError` naming those over `tol`. Returns the figures."""
    rng = np.random.default_rng(seed)
    sess = make_session(onnx_bytes)
    figures = {
        "parity_max_abs_diff": check_parity(sess, model, io, rng),
        "padded_max_abs_diff": check_padded(sess, model, io, rng),
    }
    if not model.cfg.bidirectional:  # a bidirectional encoder cannot be streamed
        figures["chunked_max_abs_diff"] = check_chunked(sess, model, io, rng)
    bad = {k: v for k, v in figures.items() if not v <= tol}
    if bad:
        raise ExportCheckError(f"export checks failed (tolerance {tol:g}): {bad}")
    return figures
