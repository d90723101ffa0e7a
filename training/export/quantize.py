"""Variants of an exported graph, each kept only if accuracy holds: int8 (dynamic quantization,
for CPU) and fp16 (half-precision weights and compute, for GPU).

fp16: `onnxruntime.transformers.float16` converts weights and compute to float16 with the graph's
inputs and outputs kept float32 (`keep_io_types`), so the manifest's io contract and the server's
state arrays are unchanged; or, with `state_dtype="float16"`, with only the tokens, lengths and
logits kept float32: the state tensors are then float16 in and out (the variant records it, and
the server holds that graph's sessions, decode batch and blobs in float16: half the bytes a row
on the device and in the store). Its accuracy is measured here with onnxruntime's CPU float16 kernels
(the same IEEE half format a GPU computes in; accumulation order differs); its speed only matters
on a GPU.

`onnxruntime.quantization.quantize_dynamic` turns LSTM nodes (peepholes included) into
`DynamicQuantizeLSTM`, and the head Gemm / embedding Gather into int8 weights; GRU and RNN nodes
stay float (onnxruntime has no quantized kernel for them), so their gain is smaller.

Caveat, measured and recorded: activations are quantized with a range computed per call over the
whole batch, so an int8 row's result depends slightly on its batch-mates and on how a stream is
chunked. The fp32 graph's exactness guarantees (padded == alone, chunked == whole) hold only
approximately here; `int8_checks` in the manifest's training summary gives the deviations seen.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from service.contract import (
    ModelManifest,
    Variant,
    load_artifact,
    save_artifact,
    sha256_file,
    tokenizer_from_spec,
)
from training.export.verify import make_session, padded_diff, run_graph

INT8_FILE = "model.int8.onnx"
FP16_FILE = "model.fp16.onnx"
VariantKind = Literal["int8", "fp16"]
StateDtype = Literal["float32", "float16"]
Evaluate = Callable[[ort.InferenceSession, ModelManifest], float]
log = logging.getLogger(__name__)


def classify_accuracy(
    sequences: Sequence[Sequence[int]], labels: Sequence[int], batch: int = 64
) -> Evaluate:
    """Accuracy of a classify graph on token-id sequences (padded batches, exact lengths)."""

    def evaluate(sess: ort.InferenceSession, m: ModelManifest) -> float:
        correct = 0
        for start in range(0, len(sequences), batch):
            rows = [list(s) or [0] for s in sequences[start : start + batch]]
            lengths = np.array([len(r) for r in rows], np.int32)
            tokens = np.zeros((len(rows), int(lengths.max())), np.int64)
            for b, r in enumerate(rows):
                tokens[b, : len(r)] = r
            logits, _ = run_graph(sess, m.io, tokens, lengths, m.init_states(len(rows)))
            correct += int((logits.argmax(1) == np.asarray(labels[start : start + batch])).sum())
        return correct / len(sequences)

    return evaluate


def lm_loss(ids: Sequence[int], streams: int = 16) -> Evaluate:
    """Mean next-token loss (nats) of a next_token graph: the text is cut into `streams`
    contiguous pieces fed one token per call, side by side, with the state carried."""
    arr = np.asarray(ids, np.int64)
    n = (len(arr) - 1) // streams
    x = arr[: n * streams].reshape(streams, n)  # (S, n) inputs
    y = arr[1 : n * streams + 1].reshape(streams, n)  # (S, n) targets

    def evaluate(sess: ort.InferenceSession, m: ModelManifest) -> float:
        states = m.init_states(streams)
        ones = np.ones(streams, np.int32)
        total = 0.0
        for t in range(n):
            logits, states = run_graph(sess, m.io, x[:, t : t + 1], ones, states)  # (S, V)
            z = logits - logits.max(1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(1, keepdims=True))
            total -= float(logp[np.arange(streams), y[:, t]].sum())
        return total / (n * streams)

    return evaluate


@dataclass(frozen=True)
class VariantOutcome:
    """Both figures of the comparison, and the variant recorded (None: refused)."""

    fp32: float
    value: float
    variant: Variant | None


def add_int8_variant(
    artifact_dir: Path,
    evaluate: Evaluate,
    metric: str,
    tolerance: float,
    higher_is_better: bool = True,
) -> Variant | None:
    """Quantize, evaluate both graphs with `evaluate`, and record the variant if the metric moves
    by at most `tolerance` in the bad direction. Returns the variant, or None if it was refused."""
    return try_variant("int8", artifact_dir, evaluate, metric, tolerance, higher_is_better).variant


def _convert(kind: VariantKind, src: Path, dst: Path, keep_io: bool | list[str] = True) -> None:
    """`keep_io` (fp16): the graph inputs and outputs left float32 (True: all of them)."""
    if kind == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        logging.disable(logging.WARNING)  # quantize_dynamic warns at length about every input
        try:
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        finally:
            logging.disable(logging.NOTSET)
        return
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = convert_float_to_float16(onnx.load(str(src)), keep_io_types=keep_io)
    onnx.save(half, str(dst))


def try_variant(
    kind: VariantKind,
    artifact_dir: Path,
    evaluate: Evaluate,
    metric: str,
    tolerance: float,
    higher_is_better: bool = True,
    evaluated_on: dict[str, Any] | None = None,
    state_dtype: StateDtype = "float32",
) -> VariantOutcome:
    """Convert the artifact's fp32 graph to `kind`, evaluate both graphs with `evaluate`, and
    record the variant if the metric moves by at most `tolerance` in the bad direction.
    `evaluated_on` (what data was measured) is stored with the deviations in the manifest's
    `training.<kind>_checks`. A refused variant leaves the artifact as it was."""
    manifest, onnx_path = load_artifact(artifact_dir)
    file = INT8_FILE if kind == "int8" else FP16_FILE
    target = artifact_dir / file
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / file
        io = manifest.io  # float16 state: it crosses in half precision, the rest stays float32
        keep = True if state_dtype == "float32" else [io.tokens, io.lengths, io.logits]
        _convert(kind, onnx_path, staged, keep)
        base_sess, sess = make_session(onnx_path.read_bytes()), make_session(staged.read_bytes())
        # the variant as the server will serve it (its state tensors in `state_dtype`)
        served = manifest.served_as(_variant(kind, file, "0" * 64, metric, 0, 0, 0, state_dtype))
        fp32, value = evaluate(base_sess, manifest), evaluate(sess, served)
        worse = (fp32 - value) if higher_is_better else (value - fp32)
        if worse > tolerance:
            log.warning(
                "%s refused: %s %.4f -> %.4f (tolerance %g)", kind, metric, fp32, value, tolerance
            )
            return VariantOutcome(fp32, value, None)
        checks: dict[str, Any] = {
            "padded_max_abs_diff": _padded(sess, served),
            "max_abs_diff_vs_fp32": _vs_fp32(base_sess, sess, manifest, served),
        }
        if evaluated_on is not None:
            checks["evaluated_on"] = evaluated_on
        staged.replace(target)
    variant = _variant(kind, file, sha256_file(target), metric, fp32, value, tolerance, state_dtype)
    training = manifest.training.model_copy(update={f"{kind}_checks": checks})
    others = [v for v in manifest.variants if v.name != kind]
    updated = manifest.model_copy(update={"variants": [*others, variant], "training": training})
    save_artifact(artifact_dir, onnx_path.read_bytes(), updated)
    return VariantOutcome(fp32, value, variant)


def _batch(m: ModelManifest, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([12, 1, 5, 12, 7], np.int32)
    tokens = rng.integers(0, tokenizer_from_spec(m.tokenizer).vocab_size, (len(lengths), 12))
    return tokens, lengths


def _padded(sess: ort.InferenceSession, m: ModelManifest) -> float:
    tokens, lengths = _batch(m, np.random.default_rng(0))
    return padded_diff(sess, m.io, tokens, lengths, m.init_states(len(lengths)))


def _vs_fp32(
    fp32: ort.InferenceSession, other: ort.InferenceSession, m: ModelManifest, served: ModelManifest
) -> float:
    tokens, lengths = _batch(m, np.random.default_rng(1))
    a, _ = run_graph(fp32, m.io, tokens, lengths, m.init_states(len(lengths)))
    b, _ = run_graph(other, served.io, tokens, lengths, served.init_states(len(lengths)))
    return float(np.abs(a - b).max())


def _variant(
    kind: VariantKind,
    file: str,
    sha256: str,
    metric: str,
    fp32: float,
    value: float,
    tolerance: float,
    state_dtype: StateDtype,
) -> Variant:
    return Variant(
        name=kind,
        file=file,
        sha256=sha256,
        metric=metric,
        fp32_value=fp32,
        value=value,
        tolerance=tolerance,
        state_dtype=state_dtype,
    )
