from __future__ import annotations

import httpx


async def test_predict_and_generate(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/models/syn-char-lstm/predict", json={"inputs": ["hello", "wo"]})
    assert r.status_code == 200, r.text
    r = await client.post("/v1/models/syn-word-gru/predict", json={"inputs": ["good movie"]})
    assert r.status_code == 200, r.text
    r = await client.post("/v1/models/syn-char-lstm/generate", json={"prompt": "hi", "max_tokens": 10, "seed": 1})
    assert r.status_code == 200, r.text
    print(r.json())
