"""Hardening tests reuse the service fixtures (cheap to expensive: clock -> registry -> app)."""

from __future__ import annotations

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
