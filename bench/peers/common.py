"""What every peer does, written once so that each does exactly the same work per request.

Imports only numpy, onnxruntime and the project's model contract (`service.contract`: the
manifest and the tokenizers, stdlib + pydantic + numpy), never torch or the service engine.
The repository root is put on `sys.path` by the peer scripts.

* step: one character + the state (h, c as [layers, 1, hidden]) -> top-5 next characters with
  probabilities + the new state (peers have no server-held state: the client carries it);
* classify: a batch of texts -> per text the label and the class probabilities, one padded
  onnxruntime call with exact per-row lengths (like the service's prefill);
* generate (the FastAPI floor only): one onnxruntime call per token per stream.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from service.contract import load_artifact, tokenizer_from_spec  # noqa: E402

TOP_K = 5


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out


class Model:
    """One onnxruntime session with the service's default options (threads = auto)."""

    def __init__(self, path: str | Path) -> None:
        self.manifest, onnx_path = load_artifact(Path(path))
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        threads = int(os.environ.get("BENCH_ORT_THREADS", "0"))
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self.tokenizer = tokenizer_from_spec(self.manifest.tokenizer)
        io = self.manifest.io
        self.inputs = io.input_names()
        self.outputs = io.output_names()
        self.labels = self.manifest.labels
        self.pad_id = getattr(self.tokenizer, "pad_id", 0)
        self.vocab: list[str] = (
            [self.tokenizer.decode([i]) for i in range(self.tokenizer.vocab_size)]
            if self.labels is None
            else []
        )
        self.state_shapes = [s.concrete_shape(1) for s in io.states]

    def init_state(self, batch: int = 1) -> list[np.ndarray]:
        return list(self.manifest.init_states(batch))

    def run(
        self, tokens: np.ndarray, lengths: np.ndarray, states: list[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        feed = dict(zip(self.inputs, (tokens, lengths, *states), strict=True))
        out = self.session.run(self.outputs, feed)
        return out[0], list(out[1:])

    # -- session step -----------------------------------------------------------------------

    def step_batch(
        self, chars: list[str], h: np.ndarray, c: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """chars (B,), h/c [layers, B, hidden] -> (logits (B, V), h, c)."""
        ids = [self.tokenizer.encode(ch)[-1] for ch in chars]
        tokens = np.asarray(ids, np.int64)[:, None]  # (B, 1)
        lengths = np.ones(len(ids), np.int32)
        logits, (h2, c2) = self.run(tokens, lengths, [h, c])
        return logits, h2, c2

    def top(self, logits: np.ndarray) -> list[dict[str, Any]]:
        """Top-5 next characters of one row, like the service's feed output."""
        p = _softmax(logits)
        idx = np.argsort(-p, kind="stable")[:TOP_K]
        return [{"token": self.vocab[i], "prob": float(p[i])} for i in idx.tolist()]

    def step_json(self, body: dict[str, Any]) -> dict[str, Any]:
        """{"text": ch, "h": nested, "c": nested} -> {"next": top5, "h", "c"}."""
        h = np.asarray(body["h"], np.float32)
        c = np.asarray(body["c"], np.float32)
        logits, h2, c2 = self.step_batch([body["text"]], h, c)
        return {"next": self.top(logits[0]), "h": h2.tolist(), "c": c2.tolist()}

    # -- classification ---------------------------------------------------------------------

    def classify(self, texts: list[str]) -> np.ndarray:
        """Texts -> probabilities (B, C): one padded call, exact per-row lengths."""
        seqs = [self.tokenizer.encode(t) or [self.pad_id] for t in texts]
        T = max(len(s) for s in seqs)
        tokens = np.full((len(seqs), T), self.pad_id, np.int64)
        for i, s in enumerate(seqs):
            tokens[i, : len(s)] = s
        lengths = np.asarray([len(s) for s in seqs], np.int32)
        logits, _ = self.run(tokens, lengths, self.init_state(len(seqs)))
        return _softmax(logits)

    def classify_json(self, texts: list[str]) -> list[dict[str, Any]]:
        assert self.labels is not None
        probs = self.classify(texts)
        return [
            {
                "label": self.labels[int(p.argmax())],
                "probs": dict(zip(self.labels, p.tolist(), strict=True)),
            }
            for p in probs
        ]


def model_dirs() -> tuple[str, str]:
    """(char model dir, classifier dir) from the environment the suite sets."""
    return os.environ["BENCH_CHAR_MODEL"], os.environ["BENCH_CLS_MODEL"]
