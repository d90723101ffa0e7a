"""The playground in headless Chromium against a live server: stream a generation, stop one
(and see the server drop it), reproduce a random sample from its shown seed, load each model's
sampling defaults, watch the live sentiment follow the typing through a session fed only the new
characters, and see errors displayed. Screenshots go to test-artifacts/playground/."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app import create_app
from service.engine.registry import load_registry
from service.settings import Settings
from tests.conftest import FIXTURE_MODELS
from tests.servers import serve_in_thread

pytestmark = pytest.mark.e2e
expect = pytest.importorskip("playwright.sync_api").expect

LM = "tiny-char-lstm"
CLS = "tiny-sentiment-lstm"
# a language model whose manifest asks for other sampling defaults than LM's
OTHER_LM = "tiny-char-gru"
OTHER_CLS = "tiny-sentiment-gru"  # before CLS in the list
OTHER_SAMPLING = {"temperature": 0.5, "top_k": 7, "top_p": 0.9, "max_tokens": 60}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The fixture models, with OTHER_LM's manifest given its own sampling defaults."""
    models = tmp_path_factory.mktemp("models")
    shutil.copytree(FIXTURE_MODELS, models, dirs_exist_ok=True)
    manifest = models / OTHER_LM / "manifest.json"
    data = json.loads(manifest.read_text())
    data["sampling"] |= OTHER_SAMPLING
    manifest.write_text(json.dumps(data))
    # the live sentiment box defaults to the classifier trained on the shortest texts: give the
    # second one in list order the shorter training texts
    for name, max_len in ((CLS, 64), (OTHER_CLS, 400)):
        manifest = models / name / "manifest.json"
        data = json.loads(manifest.read_text())
        data["training"].setdefault("config", {}).setdefault("data", {})["max_len"] = max_len
        manifest.write_text(json.dumps(data))
    settings = Settings(models_dir=models, max_wait_ms=1.0, max_tokens_limit=200_000)
    app = create_app(settings, registry=load_registry(models), configure_logs=False)
    with serve_in_thread(app) as addr:
        yield f"http://{addr}"


def text_of(page: Any, sel: str) -> str:
    return str(page.locator(sel).text_content() or "")


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    """Poll from Python: the page's CSP (no eval) rules out `page.wait_for_function`."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def wait_fed(page: Any, n: int) -> None:
    expect(page.locator("#sent-fed")).to_have_text(str(n))
    expect(page.locator("body")).to_have_attribute("data-sentiment", "idle")


def active_streams(server: str, model: str) -> float:
    metrics = httpx.get(f"{server}/metrics").text
    m = re.search(rf'^rnnserve_active_streams{{model="{model}"}} (\S+)$', metrics, re.M)
    return float(m.group(1)) if m else 0.0


def test_generation_streams_into_the_page(page: Any, server: str, shots: Path) -> None:
    page.select_option("#gen-model", LM)
    page.fill("#prompt", "ROMEO:\n")
    page.fill("#max_tokens", "400")
    page.fill("#seed", "7")
    page.fill("#top_k", "20")
    page.click("#generate")
    page.wait_for_selector("body[data-gen='idle']")
    status = text_of(page, "#gen-status")
    assert "400 tokens" in status and "finished: length" in status and "seed 7" in status
    assert re.search(r"400 tokens · \d+ tok/s · \d+ ms to first token", status), status
    shown = text_of(page, "#gen-text")
    # the page shows exactly what the API generates for the same parameters
    body = {"prompt": "ROMEO:\n", "max_tokens": 400, "seed": 7, "top_k": 20}
    body |= {"temperature": 0.8, "top_p": 1.0}  # the model's defaults, set by the page
    expected = httpx.post(f"{server}/v1/models/{LM}/generate", json=body).json()["text"]
    assert shown == expected and len(shown) > 0
    assert text_of(page, "#gen-prompt") == "ROMEO:\n"
    page.screenshot(path=shots / "generate-done.png")


def test_stop_cancels_the_stream(page: Any, server: str, shots: Path) -> None:
    page.select_option("#gen-model", LM)
    page.fill("#prompt", "JULIET:\n")
    page.fill("#max_tokens", "200000")
    page.fill("#seed", "")
    page.click("#generate")
    wait_until(lambda: len(text_of(page, "#gen-text")) > 200, "the first tokens")
    first = len(text_of(page, "#gen-text"))
    wait_until(lambda: len(text_of(page, "#gen-text")) > first + 200, "more tokens")
    assert page.locator("body").get_attribute("data-gen") == "streaming"
    assert page.is_enabled("#stop") and page.is_disabled("#generate")
    assert active_streams(server, LM) >= 1
    page.screenshot(path=shots / "generate-streaming.png")
    page.click("#stop")
    page.wait_for_selector("body[data-gen='idle']")
    assert "stopped after" in text_of(page, "#gen-status")
    stopped_at = len(text_of(page, "#gen-text"))
    assert stopped_at < 200_000
    deadline = time.monotonic() + 10  # closing the connection made the server drop the stream
    while active_streams(server, LM) > 0:
        assert time.monotonic() < deadline, "the server kept generating after Stop"
        time.sleep(0.1)
    page.wait_for_timeout(300)
    assert len(text_of(page, "#gen-text")) == stopped_at  # nothing arrives after Stop
    assert page.is_enabled("#generate") and page.is_disabled("#stop")
    page.screenshot(path=shots / "generate-stopped.png")


def _prob(page: Any) -> float:
    return float(text_of(page, "#sent-prob").removeprefix("p = "))


def _expected(server: str, text: str) -> dict[str, Any]:
    out: dict[str, Any] = httpx.post(
        f"{server}/v1/models/{CLS}/predict", json={"inputs": [text]}
    ).json()["outputs"][0]
    return out


def test_the_sentiment_box_defaults_to_the_short_text_classifier(page: Any) -> None:
    expect(page.locator("#sent-model")).to_have_value(CLS)
    names = page.locator("#sent-model option").evaluate_all("os => os.map(o => o.value)")
    assert names.index(OTHER_CLS) < names.index(CLS)  # not merely the first one


def test_sentiment_follows_typing_through_a_session(page: Any, server: str, shots: Path) -> None:
    feeds: list[str] = []
    page.on(
        "request",
        lambda r: (
            feeds.append(json.loads(r.post_data or "{}")["text"])
            if r.method == "POST" and r.url.endswith("/feed")
            else None
        ),
    )
    page.select_option("#sent-model", CLS)
    box = page.locator("#sent-text")
    first = "This movie was not good at all. "
    box.press_sequentially(first, delay=15)
    wait_fed(page, len(first))
    sid = text_of(page, "#sent-session")
    assert len(sid) >= 20 and text_of(page, "#sent-label") in ("positive", "negative")
    v1, p1 = int(text_of(page, "#sent-version")), _prob(page)
    want = _expected(server, first)
    assert text_of(page, "#sent-label") == want["label"]
    assert abs(p1 - want["probs"][want["label"]]) < 1e-3
    page.screenshot(path=shots / "sentiment-1.png")

    more = "The acting was awful, but the music was great and the ending wonderful!"
    box.press_sequentially(more, delay=15)
    whole = first + more
    wait_fed(page, len(whole))
    v2, p2 = int(text_of(page, "#sent-version")), _prob(page)
    want = _expected(server, whole)
    assert v2 > v1 and p2 != p1 and text_of(page, "#sent-session") == sid
    assert text_of(page, "#sent-label") == want["label"]
    assert abs(p2 - want["probs"][want["label"]]) < 1e-3
    # only the new characters were fed, in order, and they add up to the text
    assert "".join(feeds) == whole and len(feeds) >= 3
    assert "reset" not in text_of(page, "#sent-note")
    page.screenshot(path=shots / "sentiment-2.png")

    # an edit that is not an append: reset the session, re-feed everything
    box.press("End")
    for _ in range(10):
        box.press("Backspace")
    cut = whole[:-10]
    wait_fed(page, len(cut))
    assert "session reset" in text_of(page, "#sent-note")
    assert int(text_of(page, "#sent-version")) > v2
    want = _expected(server, cut)
    assert abs(_prob(page) - want["probs"][want["label"]]) < 1e-3
    info = httpx.get(f"{server}/v1/sessions/{sid}").json()
    assert info["version"] == int(text_of(page, "#sent-version"))
    page.screenshot(path=shots / "sentiment-edited.png")
    # typing on: the note was about the last edit, not this one
    box.press_sequentially(" Fine.", delay=15)
    wait_fed(page, len(cut) + len(" Fine."))
    assert text_of(page, "#sent-note") == ""
    page.close()  # leaving the page deletes its session (a keepalive DELETE on pagehide)
    gone = lambda: httpx.get(f"{server}/v1/sessions/{sid}").status_code == 404  # noqa: E731
    wait_until(gone, "the session to be deleted")


def _generate(page: Any, seed: str) -> tuple[str, str]:
    """Generate with the seed box set to `seed`: (the text, the seed the status line shows)."""
    page.fill("#seed", seed)
    page.click("#generate")
    page.wait_for_selector("body[data-gen='idle']")
    status = text_of(page, "#gen-status")
    shown = re.search(r"seed (\d+)$", status)
    assert shown and "finished" in status, status
    return text_of(page, "#gen-text"), shown.group(1)


def test_a_random_sample_is_reproduced_from_its_shown_seed(page: Any, server: str) -> None:
    # issue 15.1: the seed shown for a random sample, typed back in, gives the same text
    page.select_option("#gen-model", LM)
    page.fill("#prompt", "ROMEO:\n")
    page.fill("#max_tokens", "300")
    for _ in range(3):
        text, seed = _generate(page, "")
        assert int(seed) < 2**53  # the server draws seeds every JSON client reads exactly
        assert f"last: {seed}" in (page.get_attribute("#seed", "placeholder") or "")
        assert _generate(page, seed) == (text, seed) and text


def test_seeds_beyond_2_53_go_and_come_back_as_digits(page: Any, server: str) -> None:
    # a seed from elsewhere (any client may send up to 2^63 - 1): a JavaScript number would turn
    # 2^53 + 1 into 2^53, in the request and in the shown seed
    page.select_option("#gen-model", LM)
    page.fill("#prompt", "ROMEO:\n")
    page.fill("#max_tokens", "200")
    url = f"{server}/v1/models/{LM}/generate"
    body = {"prompt": "ROMEO:\n", "max_tokens": 200, "temperature": 0.8, "top_p": 1.0}
    for seed in (2**53 + 1, 2**63 - 1, 68772545294786577):
        expected = httpx.post(url, json={**body, "seed": seed}).json()["text"]
        rounded = httpx.post(url, json={**body, "seed": int(float(seed)) % 2**63}).json()["text"]
        assert expected != rounded  # so the text tells whether the seed arrived exactly
        assert _generate(page, str(seed)) == (expected, str(seed))
    page.fill("#seed", "12x")
    page.press("#prompt", "Control+Enter")  # past the box's own pattern check: the server's 422
    page.wait_for_selector("#error:not([hidden])")
    assert "seed" in text_of(page, "#error-message")


def test_each_model_loads_its_sampling_defaults(page: Any, server: str) -> None:
    # issue 15.4: the manifest's defaults, max tokens included, at load and on every change
    models = {m["name"]: m["sampling"] for m in httpx.get(f"{server}/v1/models").json()["models"]}
    assert models[OTHER_LM]["max_tokens"] != models[LM]["max_tokens"]

    def shown() -> dict[str, float]:
        return {k: float(page.input_value(f"#{k}")) for k in OTHER_SAMPLING}

    first = page.input_value("#gen-model")
    assert shown()["max_tokens"] == models[first]["max_tokens"]
    page.fill("#max_tokens", "5")
    page.select_option("#gen-model", OTHER_LM)
    assert shown() == OTHER_SAMPLING
    page.select_option("#gen-model", LM)
    want = models[LM] | {"top_k": models[LM]["top_k"] or 0}
    assert shown() == {k: float(want[k]) for k in OTHER_SAMPLING}


def test_the_icon_is_served_and_the_console_stays_clean(browser: Any, server: str) -> None:
    # issue 15.4: no 404 for the icon (nor anything else) in the console of a fresh page. Headless
    # Chromium fetches no icons, so the icon is fetched as a browser with a window would: the
    # page's `<link rel="icon">`, and `/favicon.ico` (where a browser looks without one)
    p = browser.new_page()
    failed: list[str] = []
    console: list[str] = []
    p.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    p.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    p.goto(f"{server}/playground")
    p.wait_for_selector("body[data-ready='true']")
    href = p.locator("link[rel='icon']").get_attribute("href")
    p.wait_for_timeout(300)
    p.close()
    assert not failed and not console, (failed, console)
    for path in (href, "/favicon.ico"):
        icon = httpx.get(f"{server}{path}")
        assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon", path
        assert icon.content[:4] == b"\x00\x00\x01\x00" and len(icon.content) > 1000  # an ICO


def test_errors_are_shown(page: Any, shots: Path) -> None:
    assert page.is_hidden("#error")
    page.select_option("#gen-model", LM)
    page.fill("#prompt", "KING:")  # 'K' is not in the tiny model's vocabulary
    page.click("#generate")
    page.wait_for_selector("#error:not([hidden])")
    assert "unknown_characters (422)" in text_of(page, "#error-code")
    assert "prompt" in text_of(page, "#error-message")
    assert text_of(page, "#gen-status") == "failed"
    page.screenshot(path=shots / "error.png")
    page.fill("#prompt", "ROMEO:")
    page.fill("#max_tokens", "0")
    page.click("#generate")  # the browser's own validation stops an out-of-range field first
    assert page.locator("body").get_attribute("data-gen") == "idle"
    page.click("#error-close")
    assert page.is_hidden("#error")


def test_controls_are_labelled_and_layout_narrows(page: Any, shots: Path) -> None:
    controls = page.locator("input, select, textarea")
    assert controls.count() >= 9
    for i in range(controls.count()):
        el = controls.nth(i)
        assert el.evaluate("e => e.labels.length") > 0, el.get_attribute("id")
    page.set_viewport_size({"width": 420, "height": 900})
    page.screenshot(path=shots / "narrow.png", full_page=True)


def test_the_seed_box_looks_like_the_other_controls(page: Any) -> None:
    """Issue 32.14: `type="text"` was missing from the rule that styles the inputs."""

    def style(sel: str) -> dict[str, str]:
        js = "e => { const s = getComputedStyle(e); return {b: s.borderTopWidth + s.borderTopStyle"
        js += ", p: s.paddingTop + s.paddingLeft, r: s.borderTopLeftRadius, w: e.offsetWidth} }"
        out: dict[str, str] = page.eval_on_selector(sel, js)
        return out

    assert style("#seed") == style("#max_tokens")
