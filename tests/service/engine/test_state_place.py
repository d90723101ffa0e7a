"""Where the decode batch's state lives: the device path (OrtValues bound to each step, rows
joining and leaving through the Gather / Concat graphs) gives bit-identical results to the host
path. Run here on the CPU provider, the only one CI has; the same code runs on CUDA
(bench/gpu_check.py checks it there)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from service.contract import load_artifact
from service.engine.device_graphs import graph
from service.engine.holes import plan
from service.engine.runner import Runner
from service.engine.state_place import DeviceState, HostState, place_for
from tests.conftest import FIXTURE_MODELS
from tests.service.conftest import CHAR_MODELS, ClientFactory, app_of, new_session


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_the_hand_encoded_graphs_are_numpy_take_and_concatenate(dtype: str, axis: int) -> None:
    rng = np.random.default_rng(axis)
    x = rng.standard_normal((3, 4, 5)).astype(dtype)
    y = rng.standard_normal((3, 4, 5)).astype(dtype)
    gather = ort.InferenceSession(graph("Gather", dtype, axis), providers=["CPUExecutionProvider"])
    idx = np.array([2, 0, 2], np.int64)
    (got,) = gather.run(None, {"x": x, "idx": idx})
    assert got.dtype == x.dtype and np.array_equal(got, np.take(x, idx, axis=axis))
    concat = ort.InferenceSession(graph("Concat", dtype, axis), providers=["CPUExecutionProvider"])
    (got,) = concat.run(None, {"a": x, "b": y})
    assert np.array_equal(got, np.concatenate([x, y], axis))


def _runner(name: str) -> Runner:
    manifest, onnx = load_artifact(FIXTURE_MODELS / name)
    return Runner(manifest, onnx, ["CPUExecutionProvider"], intra_op_threads=1)


def test_auto_keeps_the_state_on_the_host_for_the_cpu_provider() -> None:
    r = _runner("tiny-char-lstm")
    assert r.device == "cpu"
    assert isinstance(place_for(r, "auto"), HostState)
    assert isinstance(place_for(r, "off"), HostState)
    assert isinstance(place_for(r, "on"), DeviceState)


@pytest.mark.parametrize("name", CHAR_MODELS)
def test_steps_joins_and_leaves_match_the_host_path_bit_for_bit(name: str) -> None:
    r = _runner(name)
    host, dev = place_for(r, "off"), place_for(r, "on")
    rng = np.random.default_rng(0)

    def rows(n: int) -> list[list[np.ndarray]]:  # n prefilled streams' state rows
        return [
            [rng.standard_normal(s.concrete_shape(1)).astype(s.dtype) for s in r.manifest.io.states]
            for _ in range(n)
        ]

    first, later = rows(5), rows(3)
    h, d = host.join([], first), dev.join([], first)
    for step in range(6):
        n = h[0].shape[r.manifest.io.states[0].batch_axis]
        tokens = rng.integers(0, 20, (n, 1)).astype(np.int64)
        ones = np.ones(n, np.int32)
        lh, h = r.run(tokens, ones, h)
        ld, d = r.run_bound(tokens, ones, d)
        assert np.array_equal(lh, ld)
        assert all(np.array_equal(a, b.numpy()) for a, b in zip(h, d, strict=True))
        if step == 1:  # rows join the batch
            h, d = host.join(h, later), dev.join(d, later)
        if step == 3:  # rows leave it: their state comes back, the rest stays
            keep = np.array([i % 3 != 1 for i in range(n)])
            gone = np.flatnonzero(~keep).tolist()
            for a, b in zip(host.rows(h, gone), dev.rows(d, gone), strict=True):
                assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
            moves = plan(keep)  # (as the batch makes rows leave: moved in place on the host)
            h, d = host.leave(h, *moves), dev.leave(d, *moves)
    assert dev.take(d, np.zeros(0, np.int64)) == []


async def _workload(client: httpx.AsyncClient, model: str) -> dict[str, Any]:
    """Streams of different lengths in one decode batch (rows join and leave mid-batch), one
    ending on a stop string, and a session fed, generated from and exported."""
    bodies = [
        {"prompt": "ROMEO:", "max_tokens": 3 + 7 * i, "temperature": 0.9, "seed": i}
        for i in range(8)
    ]
    bodies.append({"prompt": "First", "max_tokens": 60, "seed": 9, "stop": ["e"]})
    rs = await asyncio.gather(
        *(client.post(f"/v1/models/{model}/generate", json=b) for b in bodies)
    )
    texts = [r.json()["text"] for r in rs]
    sid = (await new_session(client, model))["session_id"]
    await client.post(f"/v1/sessions/{sid}/feed", json={"text": "To be, or "})
    g = await client.post(
        f"/v1/sessions/{sid}/generate", json={"max_tokens": 25, "seed": 3, "stop": ["\n"]}
    )
    f = await client.post(f"/v1/sessions/{sid}/feed", json={"text": "n", "top_k": 1000})
    blob = (await client.get(f"/v1/sessions/{sid}/state")).json()
    return {"texts": texts, "session": g.json()["text"], "next": f.json()["output"], "blob": blob}


@pytest.mark.parametrize("model", ["tiny-char-lstm", "tiny-char-gru"])
async def test_the_server_answers_the_same_with_the_state_on_the_device(
    make_client: ClientFactory, model: str
) -> None:
    got = {}
    for mode in ("off", "on"):
        async with make_client(state_on_device=mode) as c:
            batch = app_of(c).state.local.engine.scheduler(model).decoder.batch
            assert batch.place.on_device is (mode == "on")  # the path under test is the one run
            got[mode] = await _workload(c, model)
    off, on = got["off"], got["on"]
    assert on["texts"] == off["texts"] and on["session"] == off["session"]
    assert on["next"] == off["next"]
    # the exported state (checksummed blob of the raw tensors): bit-identical
    assert on["blob"]["state"] == off["blob"]["state"]
