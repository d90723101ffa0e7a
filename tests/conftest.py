"""Shared test configuration."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_MODELS = ROOT / "tests" / "fixtures" / "models"
# max_tokens for a generation a test cuts off (disconnect, cancel): minutes long on the fixture
# models however fast the engine gets, so it cannot finish, and commit, first. Servers that
# take it raise `max_tokens_limit` to it.
LONG = 2_000_000
