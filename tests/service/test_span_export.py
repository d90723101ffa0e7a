"""`service/span_export.py`: spans encoded straight to OTLP bytes are the message the SDK's
encoder makes, and its gRPC exporter delivers them to a real OTLP receiver."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from service import span_export
from service.span_export import GrpcSpanExporter, Unencodable, encode, encoded, faster
from tests.service.otlp_receiver import Receiver, running

RESOURCE = Resource({"service.name": "rnnserve", "process.pid": 4242, "rnnserve.role": "engine"})
SCOPE = InstrumentationScope("rnnserve", "", "")
TRACE = 0x0AF7651916CD43DD8448EB211C80319C


def span(
    name: str = "engine Feed",
    *,
    span_id: int = 0x00F067AA0BA902B7,
    parent: SpanContext | None = None,
    attributes: Any = None,
    kind: SpanKind = SpanKind.INTERNAL,
    status: Status | None = None,
    trace_state: TraceState | None = None,
    links: tuple[Link, ...] = (),
    events: tuple[Event, ...] = (),
    resource: Resource = RESOURCE,
    scope: InstrumentationScope | None = SCOPE,
) -> ReadableSpan:
    context = SpanContext(TRACE, span_id, False, TraceFlags(1), trace_state)
    return ReadableSpan(
        name=name,
        context=context,
        parent=parent,
        resource=resource,
        attributes=attributes,
        events=events,
        links=links,
        kind=kind,
        status=status or Status(StatusCode.UNSET),
        start_time=1_765_000_000_123_456_789,
        end_time=1_765_000_000_223_456_789,
        instrumentation_scope=scope,
    )


LOCAL = SpanContext(TRACE, 0x1111, False, TraceFlags(1))
REMOTE = SpanContext(TRACE, 0x2222, True, TraceFlags(1))
EVERY_VALUE = {
    "s": "char-lstm",
    "empty": "",
    "unicode": "naïve ☃",
    "yes": True,
    "no": False,
    "one": 1,
    "zero": 0,
    "negative": -3,
    "huge": 2**62 + 5,
    "float": 0.25,
    "bytes": b"\x00\xff",
    "ints": [1, 2, 300],
    "strs": ("a", "b"),
    "nested": {"k": [True, 1.5], "n": None},
    "none": None,
    "long": "x" * 300,  # a length that takes a two-byte varint
}
CASES: dict[str, list[ReadableSpan]] = {
    "a root span": [span("HTTP POST /v1/sessions/{session_id}/feed", kind=SpanKind.SERVER)],
    "every kind": [span(kind=k, span_id=i + 1) for i, k in enumerate(SpanKind)],
    "every attribute value": [span(attributes=EVERY_VALUE)],
    "a local and a remote parent": [span(parent=LOCAL), span(parent=REMOTE, span_id=7)],
    "statuses": [
        span(status=Status(StatusCode.OK)),
        span(status=Status(StatusCode.ERROR, "KeyError"), span_id=2),
        span(status=Status(StatusCode.ERROR), span_id=3),
    ],
    "a trace state": [span(trace_state=TraceState([("vendor", "v1"), ("b", "2")]))],
    "links": [
        span(
            links=(
                Link(REMOTE, {"rnnserve.request_id": "r-1", "n": 3}),
                Link(LOCAL),
                Link(SpanContext(1, 2, False, TraceFlags(0), TraceState([("a", "b")]))),
            )
        )
    ],
    "an empty name, no attributes": [span("", attributes={})],
    "dropped attributes": [span(attributes=BoundedAttributes(2, {"a": 1, "b": 2, "c": 3}))],
    "two resources, three scopes": [
        span(span_id=1),
        span(span_id=2, resource=Resource({"service.name": "other"}, "https://schema/1")),
        span(span_id=3, scope=InstrumentationScope("x", "1.0", "https://schema/2", {"a": "b"})),
        span(span_id=4, scope=None),
        span(span_id=5),
    ],
    "one shape again and again, its parent, status or types aside": [
        span(attributes={"m": "lm", "n": 1}, span_id=i + 1, parent=p, status=st)
        for i, (p, st) in enumerate(
            [(None, None), (LOCAL, None), (REMOTE, None), (None, Status(StatusCode.ERROR, "E"))] * 2
        )
    ]
    + [span(attributes={"m": "lm", "n": True}, span_id=9), span(attributes={"m": "lm"})],
    "an unhashable value, twice": [span(attributes={"ints": [1, 2]}, span_id=i) for i in (1, 2)],
    "the same attributes, one as int and one as bool": [
        span(attributes={"a": 1, "b": 0}),
        span(attributes={"a": True, "b": False}, span_id=2),
        span(attributes={"a": 1.0}, span_id=3),
    ],
}


@pytest.mark.parametrize("spans", list(CASES.values()), ids=list(CASES))
def test_the_bytes_are_the_message_the_sdk_encodes(spans: list[ReadableSpan]) -> None:
    assert ExportTraceServiceRequest.FromString(encode(spans)) == encode_spans(spans)


def test_a_full_attribute_cache_is_emptied_and_encodes_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(span_export, "_SEEN_MAX", 3)
    monkeypatch.setattr(span_export, "_seen", {})
    spans = [span(attributes={"i": i, "s": str(i)}, span_id=i + 1) for i in range(10)]
    assert ExportTraceServiceRequest.FromString(encode(spans)) == encode_spans(spans)
    assert len(span_export._seen) <= 3


def test_a_full_shape_cache_is_emptied_and_encodes_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(span_export, "_SEEN_MAX", 3)
    monkeypatch.setattr(span_export, "_shapes", {})
    spans = [span(f"s{i % 5}", attributes={"i": i % 4}, span_id=i + 1) for i in range(20)]
    assert ExportTraceServiceRequest.FromString(encode(spans)) == encode_spans(spans)
    assert 0 < len(span_export._shapes) <= 3


def test_the_int64_bounds_are_encoded_here() -> None:
    spans = [span(attributes={"max": 2**63 - 1, "min": -(2**63), "in": [2**63 - 1]})]
    assert ExportTraceServiceRequest.FromString(encoded(spans)) == encode_spans(spans)


@pytest.mark.parametrize(
    "spans",
    [
        [span(), span(events=(Event("retry", {"n": 1}, 5),), span_id=2)],
        [span(attributes={"ok": 1, "bad": object()})],  # (the SDK's encoder drops `bad`, logged)
        [span(attributes={"ok": 1, "big": 2**63})],
        [span(attributes={"small": -(2**63) - 1})],
        [span(attributes={"in": [1, 2**64 + 5]})],
        [span(attributes={"ok": "x", "bad": "caf\udce9"})],  # (a lone surrogate: not UTF-8)
        [span(attributes={"m": {"k": "\ud800"}})],
        [span(attributes={1: "x", "ok": True})],  # type: ignore[dict-item]
        [span(resource=Resource({"team": "caf\udce9", "env": "prod"}))],
    ],
    ids=[
        "a span with events",
        "an attribute OTLP has no value for",
        "an int above int64",
        "an int below int64",
        "an int above int64 in an array",
        "a string with a lone surrogate",
        "a lone surrogate in a map",
        "a key that is not a string",
        "a resource attribute that is not UTF-8",
    ],
)
def test_what_it_does_not_encode_goes_to_the_sdk_encoder(spans: list[ReadableSpan]) -> None:
    with pytest.raises((Unencodable, UnicodeEncodeError, AttributeError)):
        encoded(spans)
    assert encode(spans) == encode_spans(spans).SerializeToString()


def test_otlp_over_grpc_gets_this_exporter_and_every_other_stays_the_sdks() -> None:
    assert faster(GrpcExporter) is GrpcSpanExporter
    assert faster(HttpExporter) is HttpExporter
    assert faster(ConsoleSpanExporter) is ConsoleSpanExporter


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, int]]:
    with running() as r:
        yield r


def test_the_exporter_sends_the_encoded_spans_to_a_real_receiver(
    receiver: tuple[Receiver, int],
) -> None:
    got, port = receiver
    exporter = GrpcSpanExporter(endpoint=f"127.0.0.1:{port}", insecure=True)
    try:
        spans = [s for case in CASES.values() for s in case]
        assert exporter.export(spans) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    assert got.requests == [encode_spans(spans)]
