"""Which of uvicorn's HTTP parsers carries the guards (tests/hardening/test_stream_bounds.py
drives both over real sockets)."""

from __future__ import annotations

import pytest
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.api.http_protocol import protocol_for
from service.settings import Settings


def test_auto_picks_httptools_with_the_deadlines() -> None:
    cls = protocol_for(3.0, 4.0)
    assert issubclass(cls, HttpToolsProtocol)
    assert (cls.header_timeout_s, cls.flush_timeout_s) == (3.0, 4.0)  # type: ignore[attr-defined]


def test_h11_on_request() -> None:
    cls = protocol_for(1.0, 2.0, "h11")
    assert issubclass(cls, H11Protocol) and not issubclass(cls, HttpToolsProtocol)


def test_the_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RNNSERVE_HTTP", "h11")
    assert Settings().http == "h11"
    monkeypatch.setenv("RNNSERVE_HTTP", "nghttp2")
    with pytest.raises(ValueError, match="http"):
        Settings()
