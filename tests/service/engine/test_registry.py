from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx

from service.app import create_app
from service.engine.registry import load_registry
from service.settings import Settings
from tests.conftest import FIXTURE_MODELS
from tests.service.conftest import LM
from tests.service.engine.repo_layout import NAME, add_version, write_settings


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


def test_the_version_policy_picks_the_versions_and_the_newest_is_the_default(
    tmp_path: Path,
) -> None:
    for v in ("1", "2", "3"):
        add_version(tmp_path, v)
    reg = load_registry(tmp_path)  # default policy: the newest two
    assert sorted(reg.versions[NAME]) == ["2", "3"] and reg.models[NAME].version == "3"
    cases: list[tuple[dict[str, Any], list[str], str]] = [
        ({"version_policy": {"all": True}}, ["1", "2", "3"], "3"),
        ({"version_policy": {"latest": 1}}, ["3"], "3"),
        ({"version_policy": {"specific": ["1", "3"]}, "default_version": "1"}, ["1", "3"], "1"),
    ]
    for settings, versions, default in cases:
        write_settings(tmp_path, settings)
        reg = load_registry(tmp_path)
        assert sorted(reg.versions[NAME]) == versions, settings
        assert reg.models[NAME].version == default
        assert reg.models[NAME].manifest.version == default  # the folder's name is the version


def test_a_bad_settings_file_refuses_the_model_naming_the_field(tmp_path: Path) -> None:
    add_version(tmp_path, "1")
    _copy(tmp_path, LM)
    for settings, why in (
        ({"max_batch_sise": 8}, "max_batch_sise: Extra inputs are not permitted"),
        ({"version_policy": {"latest": 1, "all": True}}, "name one of latest, all, specific"),
        ({"max_wait_ms": -1}, "max_wait_ms: Input should be greater than or equal to 0"),
        ({"default_version": "9"}, "default_version '9' is not among the versions loaded"),
    ):
        write_settings(tmp_path, settings)
        reg = load_registry(tmp_path)
        assert list(reg.models) == [LM]  # the others serve
        assert why in reg.failed[str(tmp_path / NAME)], reg.failed
