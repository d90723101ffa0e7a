from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx

from service.app import create_app
from service.engine.registry import load_registry
from service.settings import Settings
from tests.conftest import FIXTURE_MODELS
from tests.service.conftest import LM


def _copy(dst: Path, name: str, as_name: str | None = None) -> Path:
    target = dst / (as_name or name)
    shutil.copytree(FIXTURE_MODELS / name, target)
    return target


def test_broken_artifacts_are_refused_and_the_rest_serve(tmp_path: Path) -> None:
    _copy(tmp_path, LM)
    swapped = _copy(tmp_path, "tiny-char-gru", "swapped")
    (swapped / "model.onnx").write_bytes(
        (FIXTURE_MODELS / "tiny-char-rnn" / "model.onnx").read_bytes()
    )
    (tmp_path / "no-manifest").mkdir()
    (tmp_path / "no-manifest" / "model.onnx").write_bytes(b"junk")
    renamed = _copy(tmp_path, "tiny-char-rnn", "renamed-io")
    man = json.loads((renamed / "manifest.json").read_text())
    man["io"]["states"][0]["input"] = "hidden_in"  # the graph has no such input
    (renamed / "manifest.json").write_text(json.dumps(man))
    reg = load_registry(tmp_path)
    assert list(reg.models) == [LM]
    assert set(reg.failed) == {str(tmp_path / n) for n in ("swapped", "no-manifest", "renamed-io")}
    assert "sha256" in reg.failed[str(swapped)]
    assert "hidden_in" in reg.failed[str(renamed)]


def test_versions_layout_serves_the_newest(tmp_path: Path) -> None:
    shutil.copytree(FIXTURE_MODELS / LM, tmp_path / LM / "1")
    shutil.copytree(FIXTURE_MODELS / LM, tmp_path / LM / "10")
    shutil.copytree(FIXTURE_MODELS / LM, tmp_path / LM / "2")
    reg = load_registry(tmp_path)
    assert reg.models[LM].path == tmp_path / LM / "10"


async def test_readyz_reflects_refused_artifacts(tmp_path: Path) -> None:
    _copy(tmp_path, LM)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{")
    for require_all, status in ((False, 200), (True, 503)):
        s = Settings(models_dir=tmp_path, require_all_models=require_all)
        app = create_app(s, configure_logs=False)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
        ):
            r = await c.get("/readyz")
            assert r.status_code == status
            assert r.json()["models"] == [LM] and str(tmp_path / "broken") in r.json()["failed"]
            assert (
                await c.post(f"/v1/models/{LM}/predict", json={"inputs": ["a"]})
            ).status_code == 200
            assert "rnnserve_model_load_failures 1.0" in (await c.get("/metrics")).text


async def test_no_models_is_not_ready(tmp_path: Path) -> None:
    app = create_app(Settings(models_dir=tmp_path / "missing"), configure_logs=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
    ):
        assert (await c.get("/readyz")).status_code == 503
        assert (await c.get("/healthz")).status_code == 200
