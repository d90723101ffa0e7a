"""What each target is sent for the same work: the session step (one character a request after
`STEP_TEXT`) and IMDB classification, as the requests wrk replays (`loadgen.Req`).

Peers have no server-held state, so their step requests carry the state (h, c) and their
responses return the new one; the client replays a fixed, realistic state (`sample_state`: the
server's work, decode, compute, encode, is the same either way).
"""

from __future__ import annotations

import json
import sys
import urllib.request
import uuid
from typing import Any

import numpy as np

from bench.loadgen import Req
from bench.targets import JSON, PEERS, Models

STEP_TEXT = "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer"


def _post(base: str, path: str, body: dict[str, object]) -> dict[str, object]:
    req = urllib.request.Request(base + path, json.dumps(body).encode(), JSON, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return dict(json.loads(r.read()))


def sample_state(m: Models) -> tuple[np.ndarray, np.ndarray]:
    """A realistic (h, c) after some text, each [layers, 1, hidden]."""
    sys.path.insert(0, str(PEERS))
    from common import Model

    lm = Model(m.char_dir)
    ids = lm.tokenizer.encode(STEP_TEXT)
    _, (h, c) = lm.run(
        np.asarray([ids], np.int64), np.asarray([len(ids)], np.int32), lm.init_state(1)
    )
    return h, c


def _v2(name: str, inputs: list[tuple[str, np.ndarray]], outputs: list[str], binary: bool) -> Req:
    import tritonclient.http as th  # project venv (dev extra)

    ins = []
    for n, a in inputs:
        dt = "BYTES" if a.dtype == object else "FP32"
        i = th.InferInput(n, list(a.shape), dt)
        i.set_data_from_numpy(a, binary_data=binary)
        ins.append(i)
    outs = [th.InferRequestedOutput(o, binary_data=binary) for o in outputs]
    body, json_size = th.InferenceServerClient.generate_request_body(ins, outputs=outs)
    headers = dict(JSON)
    if json_size is not None:
        headers = {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(json_size),
        }
    return Req("POST", f"/v2/models/{name}/infer", headers, bytes(body))


def _v2_step(sid: str, text: str, start: bool) -> dict[str, Any]:
    params: dict[str, Any] = {"sequence_id": sid}
    if start:
        params["sequence_start"] = True
    return {
        "parameters": params,
        "inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": [text]}],
        "outputs": [{"name": "PROBS"}],
    }


def step_requests(
    target: str, base: str, m: Models, h: np.ndarray, c: np.ndarray, threads: int, connections: int
) -> list[list[Req]]:
    """One char per request; per wrk thread its own request list."""
    chars = list(dict.fromkeys(STEP_TEXT))[:16]
    if target == "rnnserve":  # one server-held session per connection, fed some text first
        out: list[list[Req]] = []
        for _ in range(threads):
            paths = []
            for _ in range(connections // threads):
                sid = _post(base, "/v1/sessions", {"model": m.char_name})["session_id"]
                _post(base, f"/v1/sessions/{sid}/feed", {"text": STEP_TEXT})
                paths.append(f"/v1/sessions/{sid}/feed")
            out.append(
                [
                    Req("POST", p, JSON, json.dumps({"text": ch}).encode())
                    for ch in chars
                    for p in paths
                ]
            )
        return out
    if target == "rnnserve-v2":  # the same, as v2 sequence steps (what tritonclient sends)
        out = []
        for _ in range(threads):
            seqs = []
            for _ in range(connections // threads):
                sid = f"v2-{uuid.uuid4().hex[:12]}"
                _post(base, f"/v2/models/{m.char_name}/infer", _v2_step(sid, STEP_TEXT, True))
                seqs.append(sid)
            path = f"/v2/models/{m.char_name}/infer"
            out.append(
                [
                    Req("POST", path, JSON, json.dumps(_v2_step(sid, ch, False)).encode())
                    for ch in chars
                    for sid in seqs
                ]
            )
        return out
    hb, cb = h.transpose(1, 0, 2), c.transpose(1, 0, 2)  # batch-first rows for v2 peers
    reqs: list[Req] = []
    for ch in chars:
        if target in ("floor", "torchserve", "bentoml"):
            path = {"floor": "/step", "torchserve": "/predictions/step", "bentoml": "/step"}[target]
            body = {"text": ch, "h": h.tolist(), "c": c.tolist()}
            reqs.append(Req("POST", path, JSON, json.dumps(body).encode()))
        elif target.startswith("pytriton"):
            text = np.array([[ch.encode()]], dtype=object)
            reqs.append(
                _v2(
                    "step",
                    [("text", text), ("h", hb), ("c", cb)],
                    ["logits", "h", "c"],
                    binary=target.endswith("bin"),
                )
            )
        elif target == "mlserver":
            body = {
                "inputs": [
                    {"name": "text", "shape": [1], "datatype": "BYTES", "data": [ch]},
                    {
                        "name": "h",
                        "shape": list(hb.shape),
                        "datatype": "FP32",
                        "data": hb.ravel().tolist(),
                    },
                    {
                        "name": "c",
                        "shape": list(cb.shape),
                        "datatype": "FP32",
                        "data": cb.ravel().tolist(),
                    },
                ]
            }
            reqs.append(Req("POST", "/v2/models/step/infer", JSON, json.dumps(body).encode()))
    return [reqs for _ in range(threads)]


def classify_requests(target: str, m: Models, texts: list[str], threads: int) -> list[list[Req]]:
    reqs: list[Req] = []
    for t in texts:
        if target == "rnnserve":
            reqs.append(
                Req(
                    "POST",
                    f"/v1/models/{m.cls_name}/predict",
                    JSON,
                    json.dumps({"inputs": [t]}).encode(),
                )
            )
        elif target in ("floor", "torchserve", "bentoml"):
            path = {
                "floor": "/classify",
                "torchserve": "/predictions/classify",
                "bentoml": "/classify",
            }[target]
            reqs.append(Req("POST", path, JSON, json.dumps({"inputs": [t]}).encode()))
        elif target.startswith("pytriton"):
            reqs.append(
                _v2(
                    "classify",
                    [("text", np.array([[t.encode()]], dtype=object))],
                    ["probs"],
                    binary=target.endswith("bin"),
                )
            )
        elif target == "mlserver":
            body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [t]}]}
            reqs.append(Req("POST", "/v2/models/classify/infer", JSON, json.dumps(body).encode()))
    per = [reqs[i::threads] for i in range(threads)]
    return per
