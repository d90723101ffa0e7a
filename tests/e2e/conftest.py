"""Playground end-to-end fixtures: a real uvicorn with the fixture models on a free loopback port,
and Debian's Chromium driven headless by Playwright (its bundled driver, never its own browser
download). Everything here skips cleanly when Chromium or the playwright package is absent."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.app import create_app
from service.engine.registry import load_registry
from service.settings import Settings
from tests.conftest import FIXTURE_MODELS, ROOT
from tests.servers import serve_in_thread

ARTIFACTS = ROOT / "test-artifacts" / "playground"
# as in the machine notes: without the background-networking flags Chromium keeps dialling
# Google's hosts, which this closed network refuses
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    path = chromium_path()
    if path is None:
        pytest.skip("chromium is not installed (scripts/system-deps.sh installs it as root)")
    pytest.importorskip("playwright.sync_api", reason="the dev extra's playwright is missing")
    return path


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    settings = Settings(models_dir=FIXTURE_MODELS, max_wait_ms=1.0, max_tokens_limit=200_000)
    app = create_app(settings, registry=load_registry(FIXTURE_MODELS), configure_logs=False)
    with serve_in_thread(app) as addr:
        yield f"http://{addr}"


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Any]:
    """A persistent context on a fresh, empty user-data dir (launched headless)."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1360, "height": 900},
        )
        context.set_default_timeout(15_000)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[Any]:
    p = browser.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    p.goto(f"{server}/playground")
    p.wait_for_selector("body[data-ready='true']")
    yield p
    p.close()
    assert not errors, errors  # no uncaught JavaScript exceptions


@pytest.fixture(scope="session")
def shots() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
