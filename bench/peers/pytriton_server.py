"""PyTriton (Triton Inference Server in a wheel): models `step` and `classify`, with Triton's
dynamic batcher, speaking the v2 protocol (binary tensors or JSON, the client's choice).

    python bench/peers/pytriton_server.py HTTP_PORT GRPC_PORT METRICS_PORT

Per-row tensors are batch-first (Triton prepends the batch axis): h, c are [layers, hidden] per
row and are transposed to the model's [layers, B, hidden] around the call.
"""

from __future__ import annotations

import sys

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import Model, model_dirs

char_dir, cls_dir = model_dirs()
lm = Model(char_dir)
clf = Model(cls_dir)
L, H = lm.state_shapes[0][0], lm.state_shapes[0][2]


@batch
def step(text: np.ndarray, h: np.ndarray, c: np.ndarray) -> dict[str, np.ndarray]:
    chars = [t[0].decode() for t in text]  # (B, 1) bytes
    hh = np.ascontiguousarray(h.transpose(1, 0, 2))  # (B, L, H) -> (L, B, H)
    cc = np.ascontiguousarray(c.transpose(1, 0, 2))
    logits, h2, c2 = lm.step_batch(chars, hh, cc)
    return {"logits": logits, "h": h2.transpose(1, 0, 2), "c": c2.transpose(1, 0, 2)}


@batch
def classify(text: np.ndarray) -> dict[str, np.ndarray]:
    probs = clf.classify([t[0].decode() for t in text])
    return {"probs": probs.astype(np.float32)}


def main() -> None:
    http, grpc, metrics = (int(x) for x in sys.argv[1:4])
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=http,
        grpc_address="127.0.0.1",
        grpc_port=grpc,
        metrics_address="127.0.0.1",
        metrics_port=metrics,
        allow_metrics=False,
        log_verbose=0,
    )
    batcher = DynamicBatcher(max_queue_delay_microseconds=500)
    with Triton(config=config) as triton:
        triton.bind(
            model_name="step",
            infer_func=step,
            inputs=[
                Tensor(name="text", dtype=bytes, shape=(1,)),
                Tensor(name="h", dtype=np.float32, shape=(L, H)),
                Tensor(name="c", dtype=np.float32, shape=(L, H)),
            ],
            outputs=[
                Tensor(name="logits", dtype=np.float32, shape=(-1,)),
                Tensor(name="h", dtype=np.float32, shape=(L, H)),
                Tensor(name="c", dtype=np.float32, shape=(L, H)),
            ],
            config=ModelConfig(max_batch_size=64, batcher=batcher),
            strict=False,
        )
        triton.bind(
            model_name="classify",
            infer_func=classify,
            inputs=[Tensor(name="text", dtype=bytes, shape=(1,))],
            outputs=[Tensor(name="probs", dtype=np.float32, shape=(-1,))],
            config=ModelConfig(max_batch_size=64, batcher=batcher),
            strict=False,
        )
        triton.serve()


if __name__ == "__main__":
    main()
