"""Tracing (service/tracing.py): when the environment turns it on, what it configures, and the
spans a real request makes, read from the SDK's in-memory exporter installed at the module's
seam (`configure(role, processor=...)`), in one process at both engine transports."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, format_span_id, format_trace_id

from service import span_export, tracing
from tests.hardening.conftest import KEY_A, KEYS, auth
from tests.servers import server_process
from tests.service.conftest import LM, ClientFactory, new_session
from tests.service.otlp_receiver import Receiver, running

TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE}-{CALLER}-01"

OTEL_VARS = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_SDK_DISABLED",
)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No OTEL_* variable from the outside."""
    for k in OTEL_VARS:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def access(self, route_end: str) -> dict[str, Any]:
        (rec,) = [r for r in self.records if r.msg == "request" and r.route.endswith(route_end)]  # type: ignore[attr-defined]
        return vars(rec)


@pytest.fixture
def access_log() -> Iterator[Records]:
    logger = logging.getLogger("rnnserve.app")
    handler, level = Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def assert_encoded_fast(spans: list[ReadableSpan]) -> None:
    """The spans a request made are what `service/span_export.py` encodes itself (none falls
    back to the SDK's slower encoder), to the SDK's message."""
    assert ExportTraceServiceRequest.FromString(span_export.encoded(spans)) == encode_spans(spans)


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "on"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": " "}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_tracing_is_on_only_when_the_standard_variables_say_so(
    given: dict[str, str], on: bool
) -> None:
    assert tracing.wanted(given) is on


@pytest.mark.parametrize(
    ("given", "exporter"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, GrpcExporter),  # otlp's default
        ({"OTEL_TRACES_EXPORTER": "otlp"}, GrpcExporter),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            HttpExporter,
        ),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"},
            HttpExporter,
        ),
        ({"OTEL_TRACES_EXPORTER": "console"}, ConsoleSpanExporter),
    ],
)
def test_the_exporter_is_the_one_the_sdk_autoconfiguration_picks(
    env: pytest.MonkeyPatch, given: dict[str, str], exporter: type
) -> None:
    for k, v in given.items():
        env.setenv(k, v)
    assert tracing.exporters() == [exporter]


def test_the_resource_names_the_service_the_process_and_its_role(env: pytest.MonkeyPatch) -> None:
    attrs = tracing.resource("worker").attributes
    assert attrs["process.pid"] == os.getpid() and attrs["rnnserve.role"] == "worker"
    assert attrs["service.name"] == "rnnserve"
    env.setenv("OTEL_SERVICE_NAME", "lm-prod")
    env.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod")
    attrs = tracing.resource("engine").attributes
    assert attrs["service.name"] == "lm-prod" and attrs["deployment.environment"] == "prod"
    assert attrs["process.pid"] == os.getpid() and attrs["rnnserve.role"] == "engine"


async def test_with_tracing_off_nothing_is_configured_and_the_log_names_the_key(
    env: pytest.MonkeyPatch, make_client: ClientFactory, access_log: Records
) -> None:
    assert tracing.configure("server") is False
    assert not tracing.enabled and tracing._pipeline is None and tracing._provider is None
    with tracing.server_span("grpc Feed", {"traceparent": TRACEPARENT}) as span:
        assert span is None  # the gRPC surface's helper starts nothing either
    async with make_client(api_keys=KEYS) as c:
        headers = {**auth(KEY_A), "traceparent": TRACEPARENT}
        assert (await c.get("/v1/models", headers=headers)).status_code == 200
    line = access_log.access("/v1/models")
    assert line["key_name"] == "alice" and "trace_id" not in line
    assert KEY_A not in str(line)  # the key's name, never the key


# -- the spans of real requests -------------------------------------------------------------


def _of_trace(spans: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if format_trace_id(s.context.trace_id) == TRACE]


def _one(got: list[ReadableSpan], name: str, kind: SpanKind = SpanKind.INTERNAL) -> ReadableSpan:
    (span,) = [s for s in got if s.name == name and s.kind == kind]
    return span


def _is_parent(parent: ReadableSpan, child: ReadableSpan) -> bool:
    return child.parent is not None and child.parent.span_id == parent.context.span_id


def _engine_side(got: list[ReadableSpan], op: str, http: ReadableSpan, transport: str) -> Any:
    """The parent of the engine's spans: over the wire, the engine's SERVER span for the
    operation (`engine <Op>`, child of the worker's CLIENT span); in one process, the
    request's own span."""
    if transport == "zmq":
        client = _one(got, f"wire {op}", SpanKind.CLIENT)
        engine = _one(got, f"engine {op}", SpanKind.SERVER)
        assert _is_parent(http, client) and _is_parent(client, engine)
        return engine
    assert not [s for s in got if s.name.startswith(("wire", "engine"))]
    return http


@pytest.mark.parametrize("transport", ["inprocess", "zmq"])
async def test_a_feed_is_one_trace_from_the_callers_traceparent_down_to_the_store(
    make_client: ClientFactory, spans: InMemorySpanExporter, access_log: Records, transport: str
) -> None:
    async with make_client(engine_transport=transport, api_keys=KEYS) as c:
        r = await c.post("/v1/sessions", json={"model": LM}, headers=auth(KEY_A))
        sid = r.json()["session_id"]
        headers = {**auth(KEY_A), "traceparent": TRACEPARENT}
        r = await c.post(f"/v1/sessions/{sid}/feed", json={"text": "Hello"}, headers=headers)
        assert r.status_code == 200, r.text
    got = _of_trace(spans)
    http = _one(got, "HTTP POST /v1/sessions/{session_id}/feed", SpanKind.SERVER)
    assert http.parent is not None and http.parent.is_remote
    assert format_span_id(http.parent.span_id) == CALLER
    assert http.attributes is not None and http.attributes["http.response.status_code"] == 200
    engine = _engine_side(got, "Feed", http, transport)
    (wait,) = [s for s in got if s.name == "queue wait"]
    (batch,) = [s for s in got if s.name == "prefill batch"]
    for child in (_one(got, "store.get"), wait, batch, _one(got, "store.commit")):
        assert _is_parent(engine, child), child.name
    assert batch.attributes is not None and batch.attributes["rnnserve.batch_size"] >= 1
    assert batch.attributes["rnnserve.tokens"] == 5
    assert wait.end_time is not None and batch.start_time is not None
    assert wait.end_time <= batch.start_time  # the wait ends as its batch starts
    for s in got:
        assert s.resource.attributes["process.pid"] == os.getpid()
    line = access_log.access("/feed")
    assert line["trace_id"] == TRACE and line["key_name"] == "alice"
    assert_encoded_fast(got)


@pytest.mark.parametrize("transport", ["inprocess", "zmq"])
async def test_a_streamed_generation_has_one_decode_span_with_its_steps(
    make_client: ClientFactory, spans: InMemorySpanExporter, transport: str
) -> None:
    async with make_client(engine_transport=transport) as c:
        sid = (await new_session(c))["session_id"]
        body = {"prompt": "ROMEO:", "max_tokens": 6, "stream": True}
        async with c.stream(
            "POST",
            f"/v1/sessions/{sid}/generate",
            json=body,
            headers={"traceparent": TRACEPARENT},
        ) as r:
            raw = "".join([t async for t in r.aiter_text()])
        assert raw.count("event: token") == 6, raw
    got = _of_trace(spans)
    http = _one(got, "HTTP POST /v1/sessions/{session_id}/generate", SpanKind.SERVER)
    engine = _engine_side(got, "SessionGenerate", http, transport)
    (decode,) = [s for s in got if s.name == "decode"]  # one span, not one a step
    assert _is_parent(engine, decode)
    assert decode.attributes is not None and decode.attributes["rnnserve.tokens"] == 6
    assert decode.attributes["rnnserve.outcome"] == "length"
    assert decode.attributes["rnnserve.decode_steps"] >= 6
    assert decode.attributes["rnnserve.batch_size_mean"] >= 1
    batch = _one(got, "prefill batch")
    assert _is_parent(engine, batch) and batch.attributes is not None
    assert batch.attributes["rnnserve.tokens"] == len("ROMEO:")
    commit = _one(got, "store.commit")  # after the worker's client had every token
    assert commit.start_time is not None and decode.end_time is not None
    assert commit.start_time >= decode.end_time
    assert {format_trace_id(s.context.trace_id) for s in got} == {TRACE}
    assert_encoded_fast(got)


async def test_without_a_traceparent_a_sampled_request_starts_a_trace_and_logs_it(
    make_client: ClientFactory, spans: InMemorySpanExporter, access_log: Records
) -> None:
    async with make_client() as c:
        r = await c.post("/v1/models/tiny-char-lstm/predict", json={"inputs": ["to be"]})
        assert r.status_code == 200, r.text
    http = _one(spans.get_finished_spans(), "HTTP POST /v1/models/{model}/predict", SpanKind.SERVER)
    assert http.parent is None
    line = access_log.access("/predict")
    assert line["trace_id"] == format_trace_id(http.context.trace_id)
    assert line["key_name"] is None  # auth off


def test_server_span_is_the_parent_of_the_calls_made_inside_it(
    spans: InMemorySpanExporter,
) -> None:
    """What a non-HTTP surface (gRPC) does: its metadata as the carrier."""
    with tracing.server_span("grpc Feed", {"traceparent": TRACEPARENT}, {"rpc.system": "grpc"}):
        client, carrier = tracing.client_span("wire Feed")
        tracing.end_span(client)
    with pytest.raises(ValueError), tracing.server_span("grpc Feed", {}):
        raise ValueError("a failed call")
    server, failed = [s for s in spans.get_finished_spans() if s.name == "grpc Feed"]
    assert format_trace_id(server.context.trace_id) == TRACE
    assert server.parent is not None and format_span_id(server.parent.span_id) == CALLER
    assert failed.parent is None and not failed.status.is_ok
    assert carrier["traceparent"].split("-")[1:3] == [
        TRACE,
        format_span_id(client.get_span_context().span_id),
    ]


# -- a real server, a real OTLP receiver ----------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, int]]:
    with running() as r:
        yield r


def test_a_server_with_workers_exports_its_spans_to_an_otlp_collector(
    env: pytest.MonkeyPatch, tmp_path: Path, receiver: tuple[Receiver, int]
) -> None:
    """`rnnserve serve --workers 2` with the standard variables: the worker's and the engine's
    spans of one request reach the collector in one trace, each with its own `process.pid`."""
    got, port = receiver
    env.setenv("OTEL_TRACES_EXPORTER", "otlp")
    env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    env.setenv("OTEL_BSP_SCHEDULE_DELAY", "20")  # ms: export at once, not every 5 s
    with server_process(tmp_path, workers=2) as server:
        r = httpx.post(f"{server.base}/v1/sessions", json={"model": LM}, timeout=30)
        assert r.status_code == 201, r.text
        r = httpx.post(
            f"{server.base}/v1/sessions/{r.json()['session_id']}/feed",
            json={"text": "Hello"},
            headers={"traceparent": TRACEPARENT},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        workers, engine = server.worker_pids(), server.engine_pid()

        want = {
            ("worker", "HTTP POST /v1/sessions/{session_id}/feed"),
            ("worker", "wire Feed"),
            ("engine", "engine Feed"),
            ("engine", "store.get"),
            ("engine", "queue wait"),
            ("engine", "prefill batch"),
            ("engine", "store.commit"),
        }

        def seen() -> set[tuple[str, str]]:
            return {(role, name) for _, role, t, name in got.spans() if t == TRACE}

        with got.cv:  # the exporters send in the background: wait for every span, or fail
            assert got.cv.wait_for(lambda: want <= seen(), timeout=30), seen()
            pids = {(role, pid) for pid, role, t, _ in got.spans() if t == TRACE}
    assert {pid for role, pid in pids if role == "engine"} == {engine}
    assert {pid for role, pid in pids if role == "worker"} <= workers
