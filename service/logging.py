"""JSON logs with request ids. Bodies, texts and keys are never logged."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_STD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id.get()
        if rid is not None:
            out["request_id"] = rid
        for k, v in vars(record).items():
            if k not in _STD and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """One readable line for a terminal: time, level, logger, message, then the record's
    fields as `key=value` (what the JSON line carries, in a form a person reads)."""

    def format(self, record: logging.LogRecord) -> str:
        when = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = {k: v for k, v in vars(record).items() if k not in _STD and not k.startswith("_")}
        rid = request_id.get()
        if rid is not None:
            fields = {"request_id": rid, **fields}
        extra = "".join(f" {k}={v}" for k, v in fields.items())
        name = record.name.removeprefix("rnnserve.")
        line = f"{when}.{int(record.msecs):03d} {record.levelname:<7} {name}: "
        line += f"{record.getMessage()}{extra}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(level: str = "info", json_logs: bool | str = "auto") -> None:
    """`json_logs`: True, False, or "auto": JSON unless stderr is a terminal."""
    handler = logging.StreamHandler(sys.stderr)
    as_json = json_logs if isinstance(json_logs, bool) else not sys.stderr.isatty()
    handler.setFormatter(JsonFormatter() if as_json else TextFormatter())
    root = logging.getLogger("rnnserve")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"rnnserve.{name}")
