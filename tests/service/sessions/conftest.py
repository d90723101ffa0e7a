"""A session service over the fixture language model whose onnxruntime calls can be made to
fail (`flaky(svc).fail_after`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
import pytest

from service.engine.engine import Engine
from service.engine.registry import LoadedModel, Registry
from service.engine.scheduler import SchedulerConfig
from service.sessions import MemoryStore
from service.sessions.redis_store import RedisStore
from service.sessions.service import SessionService
from tests.service.conftest import LM, FakeClock
from tests.service.redis_server import Target, two_stores


class FlakyRunner:
    def __init__(self, real: Any) -> None:
        self.real = real
        self.manifest = real.manifest
        self.session = real.session
        self.provider = real.provider
        self.device = real.device
        self.fail_after: int | None = None
        self.calls = 0

    def run(self, tokens: np.ndarray, lengths: np.ndarray, states: Sequence[np.ndarray]) -> Any:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("injected onnxruntime failure")
        return self.real.run(tokens, lengths, states)


@pytest.fixture
async def svc(registry: Registry, clock: FakeClock) -> AsyncIterator[SessionService]:
    m = registry.models[LM]
    flaky = FlakyRunner(m.runner)
    reg = Registry({LM: LoadedModel(m.manifest, flaky, m.tokenizer, m.path)})  # type: ignore[arg-type]
    engine = Engine(reg, SchedulerConfig(max_wait_ms=1.0))
    engine.start()
    yield SessionService(
        engine,
        MemoryStore(100, clock=clock),
        default_ttl_s=60,
        max_ttl_s=600,
        idempotency_ttl_s=60,
        clock=clock,
    )
    await engine.close(1)


def flaky(svc: SessionService) -> FlakyRunner:
    runner: FlakyRunner = svc.engine.model(LM).runner  # type: ignore[assignment]
    return runner


@pytest.fixture
async def stores(any_redis: Target) -> AsyncIterator[tuple[RedisStore, RedisStore]]:
    """Two replicas with a short lease so a dead holder costs little (1 s: long enough that
    renewal survives a busy shared CI machine)."""
    async with two_stores(any_redis, lock_lease_s=1.0) as pair:
        yield pair
