"""The floor: a plain FastAPI app doing one onnxruntime call per request (no batching, no
server-held state). Any serving framework should beat it. Runs in the project's venv (same
FastAPI/uvicorn/uvloop/httptools as rnnserve) so the comparison isolates the engine.

    python bench/peers/floor.py PORT
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import Model, model_dirs

char_dir, cls_dir = model_dirs()
lm = Model(char_dir)
clf = Model(cls_dir)
app = FastAPI()


@app.get("/ready")
async def ready() -> dict[str, bool]:
    return {"ready": True}


@app.post("/step")
async def step(request: Request) -> dict[str, Any]:
    return lm.step_json(await request.json())


@app.post("/classify")
async def classify(request: Request) -> dict[str, Any]:
    body = await request.json()
    return {"outputs": clf.classify_json(body["inputs"])}


def _frame(event: str | None, data: str) -> str:
    return (f"event: {event}\n" if event else "") + f"data: {data}\n\n"


@app.post("/generate")
async def generate(request: Request) -> StreamingResponse:
    """SSE like rnnserve's: one `token` event per token, `done`, `[DONE]`. Each token is its own
    batch-1 onnxruntime call (in the default thread pool, so streams overlap)."""
    body = await request.json()
    max_tokens = int(body.get("max_tokens", 100))
    temperature = float(body.get("temperature", 1.0))
    rng = np.random.default_rng(body.get("seed"))
    ids = lm.tokenizer.encode(body.get("prompt") or "\n")

    async def events() -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        tokens = np.asarray(ids, np.int64)[None, :]
        lengths = np.asarray([len(ids)], np.int32)
        states = lm.init_state(1)
        logits, states = await loop.run_in_executor(None, lm.run, tokens, lengths, states)
        one = np.ones(1, np.int32)
        text = []
        for i in range(max_tokens):
            if i % 8 == 0 and await request.is_disconnected():
                return  # the client left: stop, like any server that frees its stream slot
            x = logits[0].astype(np.float64) / max(temperature, 1e-6)
            cdf = np.cumsum(np.exp(x - x.max()))
            tok = min(int((cdf < rng.random() * cdf[-1]).sum()), len(cdf) - 1)
            piece = lm.vocab[tok]
            text.append(piece)
            data = {"text": piece, "index": i, "token_id": tok}
            yield _frame("token", json.dumps(data, ensure_ascii=False))
            tokens = np.asarray([[tok]], np.int64)
            logits, states = await loop.run_in_executor(None, lm.run, tokens, one, states)
        done = {"text": "".join(text), "finish_reason": "length"}
        yield _frame("done", json.dumps(done, ensure_ascii=False))
        yield _frame(None, "[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream")


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
