"""The surface registry (`service/api/surfaces.py`): every path belongs to one surface, which answers
its failures (an unmatched path included) in its own error shape."""

from __future__ import annotations

import httpx
import pytest
import tritonclient.http as tc
from tritonclient.utils import InferenceServerException

from service.api.surfaces import is_stream, surface_of
from tests.service.live import LiveServer, clock, live

__all__ = ["clock", "live"]  # the fixtures, used by name


@pytest.mark.parametrize(
    ("path", "surface"),
    [
        ("/v2", "v2"),
        ("/v2/models/m/infer", "v2"),
        ("/v2/nothing/here", "v2"),
        ("/openai/v1/completions", "openai"),
        ("/v1/completions", "openai"),
        ("/openai/v1/unknown", "openai"),
        ("/v1/models/m/predict", "native"),
        ("/v1/unknown", "native"),
        ("/healthz", "health"),
        ("/metrics", "metrics"),
        ("/playground/app.js", "docs"),
        ("/nowhere", "native"),
        ("/v2x", "native"),  # a prefix is a path segment, not a string prefix
    ],
)
def test_every_path_has_one_surface(path: str, surface: str) -> None:
    assert surface_of(path).name == surface


def test_streams_are_declared_by_their_surface() -> None:
    assert is_stream("POST", "/v1/models/m/generate")
    assert is_stream("POST", "/v1/sessions/s/generate")
    assert is_stream("POST", "/openai/v1/completions") and is_stream("POST", "/v1/completions")
    assert not is_stream("GET", "/v1/models/m/generate")
    assert not is_stream("POST", "/v2/models/m/infer")


def test_an_unknown_path_answers_in_its_surfaces_shape(live: LiveServer) -> None:
    with httpx.Client(base_url=f"http://{live.url}") as h:
        r = h.get("/v2/models/m/nonsense")
        assert r.status_code == 404 and isinstance(r.json()["error"], str)  # v2: a string
        r = h.post("/openai/v1/embeddings", json={})
        err = r.json()["error"]
        assert r.status_code == 404 and err["type"] == "invalid_request_error"
        r = h.get("/v1/nonsense")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_tritonclient_reads_an_unknown_v2_path(live: LiveServer) -> None:
    """Triton's trace settings are not served: tritonclient gets v2's error shape and says what
    happened (with the native shape its exception carried a dict it could not print)."""
    client = tc.InferenceServerClient(live.url)
    with pytest.raises(InferenceServerException) as e:
        client.get_trace_settings()
    assert isinstance(e.value.message(), str) and "not found" in e.value.message().lower()
