"""An fp16 variant whose state crosses in half precision (`rnnserve quantize --kind fp16
--state-dtype float16`): the server holds that graph's sessions, decode batch and state blobs
in float16, with the state on the host or on the device alike, and chunked feeding equals one
request as it does for any graph.

The graph is made at test time from the fixture model with onnxruntime's own converter (the
call `training/export/quantize.py` makes), so nothing large is committed."""

from __future__ import annotations

import base64
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.app import create_app
from service.contract import Variant, load_artifact, save_artifact, sha256_file
from service.engine.registry import load_registry
from service.sessions.blob import decode_state
from service.settings import Settings
from tests.conftest import FIXTURE_MODELS
from tests.service.conftest import LM

onnx = pytest.importorskip("onnx")
float16 = pytest.importorskip("onnxruntime.transformers.float16")


def _with_fp16_state(root: Path) -> None:
    art = root / LM
    shutil.copytree(FIXTURE_MODELS / LM, art)
    manifest, onnx_path = load_artifact(art)
    io = manifest.io
    keep = [io.tokens, io.lengths, io.logits]  # the state tensors become float16
    half = float16.convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=keep)
    onnx.save(half, str(art / "model.fp16.onnx"))
    v = Variant(
        name="fp16",
        file="model.fp16.onnx",
        sha256=sha256_file(art / "model.fp16.onnx"),
        metric="val_loss_nats",
        fp32_value=2.0,
        value=2.0,
        tolerance=0.02,
        state_dtype="float16",
    )
    save_artifact(art, onnx_path.read_bytes(), manifest.model_copy(update={"variants": [v]}))


@contextlib.asynccontextmanager
async def _serve(root: Path, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    s = Settings(models_dir=root, variant="fp16", log_json=False, max_wait_ms=1.0, **settings)
    app = create_app(s, configure_logs=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


def test_the_variant_is_served_with_its_state_in_float16(tmp_path: Path) -> None:
    _with_fp16_state(tmp_path)
    reg = load_registry(tmp_path, variant="fp16")
    assert not reg.failed, reg.failed
    m = reg.models[LM]
    assert m.variant == "fp16" and {s.dtype for s in m.manifest.io.states} == {"float16"}
    assert all(a.dtype == np.float16 for a in m.manifest.init_states(2))
    base = load_registry(tmp_path).models[LM]  # the fp32 graph keeps its float32 state
    assert {s.dtype for s in base.manifest.io.states} == {"float32"}


@pytest.mark.parametrize("on_device", ["off", "on"])
async def test_sessions_hold_float16_and_chunked_equals_whole(
    tmp_path: Path, on_device: str
) -> None:
    _with_fp16_state(tmp_path)
    text = "First Citizen:\nBefore we proceed any further, hear me speak."
    async with _serve(tmp_path, state_on_device=on_device) as c:
        sid = (await c.post("/v1/sessions", json={"model": LM})).json()["session_id"]
        for piece in (text[:9], text[9:10], text[10:]):
            r = await c.post(f"/v1/sessions/{sid}/feed", json={"text": piece, "top_k": 1000})
            assert r.status_code == 200, r.text
        fed = {n["token"]: n["prob"] for n in r.json()["output"]["next"]}
        body = {"inputs": [text], "top_k": 1000}
        whole = (await c.post(f"/v1/models/{LM}/predict", json=body)).json()["outputs"][0]
        # the graph computes in float16 either way and its state crosses a chunk's edge in
        # float16 as it does inside one call: on this fixture, the same numbers
        assert fed == {n["token"]: n["prob"] for n in whole["next"]}
        g = await c.post(f"/v1/sessions/{sid}/generate", json={"max_tokens": 12, "seed": 4})
        assert g.status_code == 200, g.text
        blob = decode_state(
            base64.b64decode((await c.get(f"/v1/sessions/{sid}/state")).json()["state"])
        )
        assert [a.dtype for a in blob.states] == [np.float16, np.float16]
        again = await c.post("/v1/sessions", json={"state": base64.b64encode(b"").decode()})
        assert again.status_code == 422  # (a damaged blob, for contrast: named, refused)
        r = await c.post(
            "/v1/sessions",
            json={"state": (await c.get(f"/v1/sessions/{sid}/state")).json()["state"]},
        )
        assert r.status_code == 201, r.text  # its own float16 blob imports


def test_a_variant_writes_its_state_dtype_only_when_it_is_float16() -> None:
    """A manifest whose variants keep float32 state stays readable by servers from before the
    field (their manifests forbid unknown keys); a float16 one says so."""
    base = {"file": "m.onnx", "sha256": "0" * 64, "metric": "m", "fp32_value": 1.0}
    kept = Variant(name="int8", value=1.0, tolerance=0.1, **base)  # type: ignore[arg-type]
    half = Variant(name="fp16", value=1.0, tolerance=0.1, state_dtype="float16", **base)  # type: ignore[arg-type]
    assert "state_dtype" not in kept.model_dump() and "state_dtype" not in kept.model_dump_json()
    assert half.model_dump()["state_dtype"] == "float16"
    assert Variant.model_validate(kept.model_dump()).state_dtype == "float32"
