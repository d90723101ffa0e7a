"""`RNNSERVE_VARIANT`: models whose manifest has the variant serve it, the rest their fp32 graph.

The int8 graph is made at test time in a copy of the fixture models (onnxruntime's own dynamic
quantization, the same call `rnnserve export --int8` makes), so nothing large is committed."""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.contract import Variant, load_artifact, save_artifact, sha256_file
from service.engine.registry import load_registry
from service.settings import Settings
from tests.conftest import FIXTURE_MODELS
from tests.service.conftest import CLS, LM

quantization = pytest.importorskip("onnxruntime.quantization")


def _with_int8(root: Path) -> str:
    """Copy LM and CLS into `root`; give LM an int8 variant. Returns its sha256."""
    for name in (LM, CLS):
        shutil.copytree(FIXTURE_MODELS / name, root / name)
    art = root / LM
    manifest, onnx_path = load_artifact(art)
    logging.disable(logging.WARNING)  # quantize_dynamic warns at length about every input
    try:
        quantization.quantize_dynamic(
            onnx_path, art / "model.int8.onnx", weight_type=quantization.QuantType.QInt8
        )
    finally:
        logging.disable(logging.NOTSET)
    digest = sha256_file(art / "model.int8.onnx")
    v = Variant(
        name="int8",
        file="model.int8.onnx",
        sha256=digest,
        metric="val_loss_nats",
        fp32_value=2.0,
        value=2.01,
        tolerance=0.02,
    )
    save_artifact(art, onnx_path.read_bytes(), manifest.model_copy(update={"variants": [v]}))
    return digest


def test_registry_loads_the_variant_where_present(tmp_path: Path) -> None:
    digest = _with_int8(tmp_path)
    reg = load_registry(tmp_path, variant="int8")
    assert not reg.failed, reg.failed
    assert reg.models[LM].variant == "int8" and reg.models[LM].sha256 == digest
    assert reg.models[CLS].variant is None
    assert reg.models[CLS].sha256 == reg.models[CLS].manifest.onnx_sha256
    plain = load_registry(tmp_path)  # default: the fp32 graph everywhere
    assert plain.models[LM].variant is None
    assert plain.models[LM].sha256 == plain.models[LM].manifest.onnx_sha256 != digest


def test_a_variant_failing_its_checksum_is_refused(tmp_path: Path) -> None:
    _with_int8(tmp_path)
    (tmp_path / LM / "model.int8.onnx").write_bytes(b"swapped")
    reg = load_registry(tmp_path, variant="int8")
    assert "sha256" in reg.failed[str(tmp_path / LM)] and CLS in reg.models


def test_variant_setting_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RNNSERVE_VARIANT", "int8")
    assert Settings().variant == "int8"
    monkeypatch.delenv("RNNSERVE_VARIANT")
    assert Settings().variant is None


@contextlib.asynccontextmanager
async def _serve(root: Path, variant: str | None) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(models_dir=root, variant=variant, log_json=False, max_wait_ms=1.0)
    app = create_app(settings, configure_logs=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


async def test_a_state_from_the_fp32_graph_is_refused_by_the_int8_one(tmp_path: Path) -> None:
    _with_int8(tmp_path)  # the graph in use is the session's model identity
    async with _serve(tmp_path, None) as c:
        sid = (await c.post("/v1/sessions", json={"model": LM})).json()["session_id"]
        assert (await c.post(f"/v1/sessions/{sid}/feed", json={"text": "ROMEO:"})).is_success
        blob = (await c.get(f"/v1/sessions/{sid}/state")).json()["state"]
    async with _serve(tmp_path, "int8") as c:
        r = await c.post("/v1/sessions", json={"state": blob})
        assert r.status_code == 422 and r.json()["error"]["code"] == "state_model_mismatch"


async def test_models_api_and_metrics_report_the_variant(tmp_path: Path) -> None:
    digest = _with_int8(tmp_path)
    async with _serve(tmp_path, "int8") as c:
        models = {m["name"]: m for m in (await c.get("/v1/models")).json()["models"]}
        assert models[LM]["variant"] == "int8" and models[LM]["sha256"] == digest
        assert models[CLS]["variant"] == "fp32"
        detail = (await c.get(f"/v1/models/{LM}")).json()
        assert detail["variant"] == "int8" and detail["training"] is not None
        r = await c.post(f"/v1/models/{LM}/generate", json={"max_tokens": 5, "seed": 1})
        assert r.status_code == 200, r.text
        text = (await c.get("/metrics")).text
        assert f'model="{LM}"' in text and 'variant="int8"' in text
        assert 'variant="fp32"' in text
