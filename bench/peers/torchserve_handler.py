"""TorchServe handler (module-level `handle`) for models `step` and `classify`, JSON bodies,
TorchServe's own request batching (`batchSize`/`maxBatchDelay` in config.properties)."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np

sys.path.insert(0, os.environ["BENCH_PEERS_DIR"])
from common import Model, model_dirs

_model: Model | None = None


def _body(row: dict[str, Any]) -> dict[str, Any]:
    b = row.get("body") if row.get("body") is not None else row.get("data")
    if isinstance(b, (bytes, bytearray)):
        return dict(json.loads(b))
    return dict(b)  # TorchServe already parsed application/json


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[str] | None:
    global _model
    name = context.manifest["model"]["modelName"]
    if _model is None:
        char_dir, cls_dir = model_dirs()
        _model = Model(char_dir if name == "step" else cls_dir)
    if data is None:  # TorchServe calls handle(None, ctx) once at load
        return None
    bodies = [_body(r) for r in data]
    m = _model
    if name == "step":
        h = np.concatenate([np.asarray(b["h"], np.float32) for b in bodies], axis=1)
        c = np.concatenate([np.asarray(b["c"], np.float32) for b in bodies], axis=1)
        logits, h2, c2 = m.step_batch([b["text"] for b in bodies], h, c)
        return [
            json.dumps(
                {
                    "next": m.top(logits[i]),
                    "h": h2[:, i : i + 1].tolist(),
                    "c": c2[:, i : i + 1].tolist(),
                }
            )
            for i in range(len(bodies))
        ]
    texts = [b["inputs"][0] for b in bodies]
    return [json.dumps({"outputs": [o]}) for o in m.classify_json(texts)]
