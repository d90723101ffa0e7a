"""Hardening tests reuse the service fixtures (cheap to expensive: clock -> registry -> app)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.engine.registry import LoadedModel, Registry
from tests.service.conftest import (  # noqa: F401  (fixtures, registered by import)
    client,
    clock,
    make_client,
    registry,
    settings,
)

KEY_A = "alpha-key-0123456789abcdef"
KEY_B = "bravo-key-0123456789abcdef"
KEYS = f"alice:{KEY_A},bob:{KEY_B}"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class WrappedRunner:
    """A real runner with hooks: `delay_s` before each call, `fail` raising instead."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.manifest = real.manifest
        self.session = real.session
        self.provider = real.provider
        self.device = real.device
        self.delay_s = 0.0
        self.fail: BaseException | None = None
        self.calls = 0

    def run(self, tokens: np.ndarray, lengths: np.ndarray, states: Sequence[np.ndarray]) -> Any:
        self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)  # in the runner's worker thread, as onnxruntime would be
        if self.fail is not None:
            raise self.fail
        return self.real.run(tokens, lengths, states)


def wrapped(base: Registry, *names: str) -> tuple[Registry, dict[str, WrappedRunner]]:
    """A registry whose `names` run through `WrappedRunner`s (the rest as they are)."""
    runners: dict[str, WrappedRunner] = {}
    models = dict(base.models)
    for n in names:
        m = models[n]
        runners[n] = WrappedRunner(m.runner)
        models[n] = LoadedModel(m.manifest, runners[n], m.tokenizer, m.path)  # type: ignore[arg-type]
    return Registry(models), runners
