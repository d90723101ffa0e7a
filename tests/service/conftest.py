"""Service fixtures, cheap to expensive: fake clock -> models on disk -> registry -> app -> client.

Synthetic models are built with `onnx` (no torch); the exporter's fixture models under
tests/fixtures/models are used as well when present.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from service.app import create_app
from service.engine.registry import Registry, load_registry
from service.settings import Settings
from tests.conftest import FIXTURE_MODELS


class FakeClock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnx")
    from tests.service.synthetic import build_all

    return build_all(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def registry(synthetic_dir: Path) -> Registry:
    reg = load_registry(synthetic_dir)
    assert not reg.failed, reg.failed
    return reg


def fixture_model_names() -> list[str]:
    if not FIXTURE_MODELS.is_dir():
        return []
    return sorted(p.name for p in FIXTURE_MODELS.iterdir() if p.is_dir())


@pytest.fixture(scope="session")
def fixture_registry() -> Registry:
    if not fixture_model_names():
        pytest.skip("no exported fixture models yet")
    return load_registry(FIXTURE_MODELS)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings(synthetic_dir: Path) -> Settings:
    return Settings(models_dir=synthetic_dir, max_wait_ms=1.0, log_json=False)


AppFactory = Callable[..., Any]


@pytest.fixture
async def make_client(
    registry: Registry, settings: Settings, clock: FakeClock
) -> AsyncIterator[Callable[..., Any]]:
    """`async with make_client(**settings_overrides) as client:` with the lifespan running."""
    import contextlib

    @contextlib.asynccontextmanager
    async def make(reg: Registry | None = None, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        s = settings.model_copy(update=overrides)
        app = create_app(s, registry=reg or registry, clock=clock, configure_logs=False)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                c.app = app  # type: ignore[attr-defined]
                yield c

    yield make


@pytest.fixture
async def client(make_client: Callable[..., Any]) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client() as c:
        yield c


def app_of(client: httpx.AsyncClient) -> FastAPI:
    app: FastAPI = client.app  # type: ignore[attr-defined]
    return app
