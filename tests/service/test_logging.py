"""`service/logging.py`: JSON lines for machines, readable lines on a terminal (issue 32.18)."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from service.logging import JsonFormatter, TextFormatter, configure_logging, get_logger
from service.settings import Settings


def _record() -> logging.LogRecord:
    rec = logging.makeLogRecord(
        {"name": "rnnserve.http", "levelname": "INFO", "msg": "request", "levelno": 20}
    )
    rec.method, rec.path, rec.status = "POST", "/v1/models/m/predict", 200
    return rec


def test_a_text_line_carries_the_fields_a_json_line_does() -> None:
    text = TextFormatter().format(_record())
    assert " INFO    http: request method=POST path=/v1/models/m/predict status=200" in text
    data = json.loads(JsonFormatter().format(_record()))
    assert data["msg"] == "request" and data["status"] == 200 and data["logger"] == "rnnserve.http"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger("rnnserve")
    saved = (root.handlers[:], root.level, root.propagate)
    yield
    root.handlers[:], root.level, root.propagate = saved


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("setting", "tty", "as_json"),
    [("auto", False, True), ("auto", True, False), (True, True, True), (False, False, False)],
)
def test_auto_is_text_on_a_terminal_and_json_otherwise(
    monkeypatch: pytest.MonkeyPatch, setting: bool | str, tty: bool, as_json: bool
) -> None:
    err = _Tty() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    configure_logging("info", setting)
    get_logger("test").info("hello", extra={"n": 1})
    line = err.getvalue().strip()
    assert line.startswith("{") is as_json
    assert ("n=1" in line) if not as_json else (json.loads(line)["n"] == 1)


def test_the_setting_takes_true_false_and_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().log_json == "auto"
    for raw, value in (("true", True), ("false", False), ("auto", "auto")):
        monkeypatch.setenv("RNNSERVE_LOG_JSON", raw)
        assert Settings().log_json == value
