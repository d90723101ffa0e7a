"""BentoML 1.4 service: `step` (JSON, the client carries the state) and `classify` (adaptive
batching). Run with `bentoml serve bentoml_service:Peer` from this folder."""

from __future__ import annotations

import sys
from typing import Any

import bentoml

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import Model, model_dirs


@bentoml.service(workers=1)
class Peer:
    def __init__(self) -> None:
        char_dir, cls_dir = model_dirs()
        self.lm = Model(char_dir)
        self.clf = Model(cls_dir)

    @bentoml.api
    def step(self, text: str, h: list[Any], c: list[Any]) -> dict[str, Any]:
        return self.lm.step_json({"text": text, "h": h, "c": c})

    @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=1000)
    def classify(self, inputs: list[str]) -> list[dict[str, Any]]:
        return self.clf.classify_json(inputs)
