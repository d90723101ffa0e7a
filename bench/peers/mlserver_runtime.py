"""MLServer custom runtimes (v2 protocol, JSON) for models `step` and `classify`."""

from __future__ import annotations

import os
import sys

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.types import InferenceRequest, InferenceResponse

sys.path.insert(0, os.environ["BENCH_PEERS_DIR"])
from common import Model, model_dirs


class StepRuntime(MLModel):
    async def load(self) -> bool:
        self.m = Model(model_dirs()[0])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        ins = {i.name: i for i in payload.inputs}
        texts = StringCodec.decode_input(ins["text"])
        h = NumpyCodec.decode_input(ins["h"]).astype(np.float32)  # (B, L, H)
        c = NumpyCodec.decode_input(ins["c"]).astype(np.float32)
        logits, h2, c2 = self.m.step_batch(
            list(texts),
            np.ascontiguousarray(h.transpose(1, 0, 2)),
            np.ascontiguousarray(c.transpose(1, 0, 2)),
        )
        return InferenceResponse(
            model_name=self.name,
            outputs=[
                NumpyCodec.encode_output("logits", logits),
                NumpyCodec.encode_output("h", np.ascontiguousarray(h2.transpose(1, 0, 2))),
                NumpyCodec.encode_output("c", np.ascontiguousarray(c2.transpose(1, 0, 2))),
            ],
        )


class ClassifyRuntime(MLModel):
    async def load(self) -> bool:
        self.m = Model(model_dirs()[1])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        texts = StringCodec.decode_input(payload.inputs[0])
        probs = self.m.classify(list(texts)).astype(np.float32)
        return InferenceResponse(
            model_name=self.name, outputs=[NumpyCodec.encode_output("probs", probs)]
        )
