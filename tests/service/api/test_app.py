"""service/api/app.py: the app as FastAPI builds it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

# In a process of its own: a global tracer provider can be set once per process, and FastAPI's
# own telemetry (since 0.165) makes spans of every request once one is set.
SCRIPT = textwrap.dedent(
    """
    import asyncio

    import httpx
    from fastapi import FastAPI
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from service.app import create_app
    from service.settings import Settings

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    async def spans(app, path):
        exporter.clear()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            assert (await c.get(path)).status_code == 200
        return len(exporter.get_finished_spans())

    plain = FastAPI()
    plain.get("/ping")(lambda: {})
    ours = create_app(Settings(log_json=False), configure_logs=False)
    print(asyncio.run(spans(plain, "/ping")), asyncio.run(spans(ours, "/openapi.json")))
    """
)


def test_fastapis_own_telemetry_makes_no_second_span_of_a_request() -> None:
    """rnnserve's spans are its own (service/tracing.py, which sets no global provider); with
    one set by someone else (`opentelemetry-instrument`, say), FastAPI's telemetry would add a
    server span of every request and check the providers on each. A plain app in the same
    process does make spans, so this test would see ours."""
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    plain, ours = map(int, out.stdout.split())
    assert plain > 0, "FastAPI made no span of the plain app's request: the check sees nothing"
    assert ours == 0
