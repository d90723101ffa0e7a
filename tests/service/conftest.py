"""Service fixtures, cheap to expensive: fake clock -> registry (real onnxruntime on the exported
fixture models) -> app with its lifespan running -> httpx client over ASGITransport."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service import tracing
from service.app import create_app
from service.engine.registry import Registry, load_registry
from service.settings import Settings
from tests.conftest import FIXTURE_MODELS

CHAR_MODELS = ["tiny-char-gru", "tiny-char-lstm", "tiny-char-peephole", "tiny-char-rnn"]
CLASSIFIERS = ["tiny-sentiment-gru", "tiny-sentiment-lstm"]
ALL_MODELS = CHAR_MODELS + CLASSIFIERS
LM = "tiny-char-lstm"
CLS = "tiny-sentiment-gru"


class FakeClock:
    """A controllable wall clock for TTLs."""

    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


@pytest.fixture(scope="session")
def registry() -> Registry:
    reg = load_registry(FIXTURE_MODELS)
    assert not reg.failed, reg.failed
    assert set(ALL_MODELS) <= set(reg.models), sorted(reg.models)
    return reg


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings() -> Settings:
    return Settings(models_dir=FIXTURE_MODELS, max_wait_ms=1.0, log_json=False)


ClientFactory = Callable[..., contextlib.AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process, every span kept in memory."""
    exporter = InMemorySpanExporter()
    tracing.configure("server", processor=SimpleSpanProcessor(exporter))
    try:
        yield exporter
    finally:
        tracing.shutdown()


@pytest.fixture
def make_client(registry: Registry, settings: Settings, clock: FakeClock) -> ClientFactory:
    """`async with make_client(**settings_overrides) as client:` with the lifespan running."""

    @contextlib.asynccontextmanager
    async def make(
        reg: Registry | None = None, **overrides: Any
    ) -> AsyncIterator[httpx.AsyncClient]:
        s = settings.model_copy(update=overrides)
        app = create_app(s, registry=reg or registry, clock=clock, configure_logs=False)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                c.app = app  # type: ignore[attr-defined]
                yield c

    return make


@pytest.fixture
async def client(make_client: ClientFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client() as c:
        yield c


def app_of(client: httpx.AsyncClient) -> FastAPI:
    app: FastAPI = client.app  # type: ignore[attr-defined]
    return app


async def new_session(client: httpx.AsyncClient, model: str = LM, **kw: Any) -> dict[str, Any]:
    r = await client.post("/v1/sessions", json={"model": model, **kw})
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


async def no_streams_left(app: FastAPI, model: str = LM, within_s: float = 5.0) -> None:
    """Wait until `model`'s decode batch has no stream (a cancelled one leaves at its next
    step); fail if one is still there after `within_s`."""
    sched = app.state.local.engine.scheduler(model)
    for _ in range(int(within_s / 0.01)):
        if sched.active_streams == 0:
            return
        await asyncio.sleep(0.01)
    assert sched.active_streams == 0


def gate_decode_steps(app: FastAPI, monkeypatch: pytest.MonkeyPatch, model: str = LM) -> Any:
    """Make `model`'s decode steps wait (in onnxruntime's call, after the step's tokens went
    out) until the returned `threading.Event` is set: a stream then has exactly its first
    token out, whatever the machine's load. Prefills (the whole prompt at once) run freely."""
    runner = app.state.local.engine.scheduler(model).runner
    gate = threading.Event()
    real_run = runner.run

    def gated_run(tokens: Any, *args: Any) -> Any:
        if tokens.shape[1] == 1:  # a decode step
            gate.wait(10)
        return real_run(tokens, *args)

    monkeypatch.setattr(runner, "run", gated_run)
    return gate
