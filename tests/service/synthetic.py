"""Tiny synthetic artifacts built with `onnx` (no torch): a char LSTM language model and a word
GRU classifier, on ONNX's native LSTM/GRU operators with `sequence_lens` (like the exporter's)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.contract import (
    CharTokenizerSpec,
    IOSpec,
    ModelManifest,
    StateTensor,
    WordTokenizerSpec,
    save_artifact,
)
from service.contract.tokenizers import WORD_NORMALIZER, WORD_PRE

CHARS = list("\n !',.?abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
WORDS = ["[PAD]", "[UNK]", "good", "bad", "movie", "the", "was", "not", "great", "awful", "a", ".", "!"]


def _graph(cell: str, vocab: int, emb: int, hidden: int, out: int, seed: int) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    gates = {"lstm": 4, "gru": 3}[cell]

    def w(name: str, *shape: int, scale: float = 0.5) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [
        w("E", vocab, emb, scale=1.0),
        w("W", 1, gates * hidden, emb),
        w("R", 1, gates * hidden, hidden),
        w("Bias", 1, 2 * gates * hidden, scale=0.1),
        w("Wout", hidden, out, scale=1.5),
        w("bout", out, scale=0.1),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
    ]
    states = ["h"] + (["c"] if cell == "lstm" else [])
    nodes = [
        helper.make_node("Gather", ["E", "tokens"], ["emb"]),  # (B, T, E)
        helper.make_node("Transpose", ["emb"], ["x"], perm=[1, 0, 2]),  # (T, B, E)
        helper.make_node(
            cell.upper(),
            ["x", "W", "R", "Bias", "lengths", *(f"{s}_in" for s in states)],
            ["Y", *(f"{s}_last" for s in states)],
            hidden_size=hidden,
        ),
        helper.make_node("Squeeze", ["h_last", "axis0"], ["h_flat"]),  # (B, H)
        helper.make_node("MatMul", ["h_flat", "Wout"], ["mm"]),
        helper.make_node("Add", ["mm", "bout"], ["logits"]),  # (B, K)
        *(helper.make_node("Identity", [f"{s}_last"], [f"{s}_out"]) for s in states),
    ]
    st = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, "B", hidden])  # noqa: E731
    graph = helper.make_graph(
        nodes,
        f"tiny-{cell}",
        [
            helper.make_tensor_value_info("tokens", TensorProto.INT64, ["B", "T"]),
            helper.make_tensor_value_info("lengths", TensorProto.INT32, ["B"]),
            *(st(f"{s}_in") for s in states),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", out]),
            *(st(f"{s}_out") for s in states),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def _io(cell: str, hidden: int) -> IOSpec:
    states = ["h"] + (["c"] if cell == "lstm" else [])
    return IOSpec(
        states=[
            StateTensor(name=s, input=f"{s}_in", output=f"{s}_out", shape=[1, "batch", hidden],
                        batch_axis=1)
            for s in states
        ]
    )


def build_char_lm(root: Path, name: str = "syn-char-lstm", cell: str = "lstm") -> Path:
    hidden = 16
    manifest = ModelManifest(
        name=name, task="next_token", cell=cell, num_layers=1, hidden_size=hidden,  # type: ignore[arg-type]
        tokenizer=CharTokenizerSpec(vocab=CHARS), io=_io(cell, hidden), onnx_sha256="0" * 64,
    )
    onnx_bytes = _graph(cell, len(CHARS), 8, hidden, len(CHARS), seed=1)
    save_artifact(root / name / "1", onnx_bytes, manifest)
    return root / name / "1"


def build_word_classifier(root: Path, name: str = "syn-word-gru") -> Path:
    hidden = 12
    vocab = {w: i for i, w in enumerate(WORDS)}
    tok = {"model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"},
           "normalizer": WORD_NORMALIZER, "pre_tokenizer": WORD_PRE}
    manifest = ModelManifest(
        name=name, task="classify", cell="gru", num_layers=1, hidden_size=hidden,
        tokenizer=WordTokenizerSpec(tokenizer_json=tok), io=_io("gru", hidden),
        labels=["negative", "positive"], onnx_sha256="0" * 64,
    )
    save_artifact(root / name, _graph("gru", len(WORDS), 6, hidden, 2, seed=2), manifest)
    return root / name


def build_all(root: Path) -> Path:
    build_char_lm(root)
    build_word_classifier(root)
    return root
