"""`/docs` and `/redoc` render in headless Chromium with nothing fetched from outside the server
(issue 32.13: their scripts came from a CDN, so on a machine without internet both were blank),
and the playground's link leads there."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.e2e
pytest.importorskip("playwright.sync_api")


def _open(browser: Any, server: str, path: str) -> tuple[Any, list[str], list[str]]:
    """The page, the URLs it asked for outside the server (refused), and its JS errors."""
    page = browser.new_page()
    outside: list[str] = []
    errors: list[str] = []
    here = urlsplit(server).netloc

    def route(r: Any) -> None:
        if urlsplit(r.request.url).netloc != here:
            outside.append(r.request.url)
            r.abort()
        else:
            r.continue_()

    page.route("**/*", route)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{server}{path}")
    return page, outside, errors


def test_swagger_ui_renders_from_the_server_alone(browser: Any, server: str) -> None:
    page, outside, errors = _open(browser, server, "/docs")
    page.wait_for_selector(".swagger-ui .info .title")
    assert "rnnserve" in page.inner_text(".swagger-ui .info .title")
    assert page.locator(".opblock").count() > 10  # the operations, from /openapi.json
    page.close()
    assert outside == [] and errors == []


def test_redoc_renders_from_the_server_alone(browser: Any, server: str) -> None:
    page, outside, errors = _open(browser, server, "/redoc")
    page.wait_for_selector("h1")
    assert "rnnserve" in page.inner_text("h1")
    page.close()
    assert outside == [] and errors == []


def test_the_playground_links_to_the_docs(page: Any, server: str) -> None:
    page.click("nav a[href='/docs']")
    page.wait_for_selector(".swagger-ui .info .title")
