"""Spans to OTLP's protobuf bytes without building protobuf messages, and the OTLP/gRPC
exporter that sends them.

Why: the SDK's `encode_spans` makes a protobuf message object per span, attribute and value
from Python: 31-33 us a span on this project's 2-core VM, spent on the serving process's
batch-processor thread under the same GIL as its event loop (docs/benchmarks.md, "Spans encoded
straight to bytes"). Here a span is a few byte strings joined: the same message, field for
field (a test parses both and compares them). Its ids and times are encoded for each span, the
rest (name, kind, attributes, status, flags) looked up by the span's shape, which repeats from
request to request: a feed's seven spans, 2.6 us a span (4.4 us with each field encoded; the
SDK's, 23.5 us).

`encode(spans)` covers what spans carry (attributes of every OTLP value type, links, status,
trace state, parents local or remote); a batch with anything else (a span with events, an
attribute of a type OTLP has no value for, an integer outside int64, a string that is not
UTF-8) goes to the SDK's encoder, which is then the one that decides (it drops such an
attribute with a log line and sends the rest).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

if TYPE_CHECKING:
    import grpc
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import Link, SpanContext, Status

_Q = struct.Struct("<Q").pack  # fixed64
_D = struct.Struct("<d").pack  # double
_I = struct.Struct("<I").pack  # fixed32
_SMALL = [bytes([n]) for n in range(0x80)]  # one-byte varints
_KIND = {k: _SMALL[k.value + 1] for k in SpanKind}  # the SDK's kinds, 0-based; OTLP's, 1-based
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200  # OTLP's SpanFlags, as the SDK sets them
_UINT64 = (1 << 64) - 1
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
# attributes already encoded: most repeat from span to span (a model's name, a route, a status,
# a batch size), and looking one up costs a tenth of encoding it; emptied when full
_seen: dict[tuple[bytes, str, type, Any], bytes] = {}
_shapes: dict[tuple[Any, ...], bytes] = {}  # (`_shape`)
_SEEN_MAX = 4096


class Unencodable(Exception):
    """A span this encoder leaves to the SDK's (see the module's docstring)."""


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _len(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: `tag` (one byte: field number << 3 | 2) and `payload`."""
    n = len(payload)
    return tag + (_SMALL[n] if n < 0x80 else _varint(n)) + payload


def _text(tag: bytes, s: str) -> bytes:
    return _len(tag, s.encode())


def _value(v: Any) -> bytes:
    """OTLP's `AnyValue`, chosen by type in the order the SDK's `_encode_value` chooses."""
    if v is None:
        return b""
    if isinstance(v, bool):
        return b"\x10\x01" if v else b"\x10\x00"
    if isinstance(v, str):
        return _text(b"\x0a", v)
    if isinstance(v, int):
        if not _INT64_MIN <= v <= _INT64_MAX:
            raise Unencodable("an integer outside int64")  # (the SDK's drops the attribute)
        return b"\x18" + _varint(v & _UINT64)  # int64: two's complement, as 10 bytes when < 0
    if isinstance(v, float):
        return b"\x21" + _D(v)
    if isinstance(v, bytes):
        return _len(b"\x3a", v)
    if isinstance(v, Sequence):
        return _len(b"\x2a", b"".join([_len(b"\x0a", _value(x)) for x in v]))
    if isinstance(v, Mapping):
        return _len(b"\x32", b"".join([_key_value(b"\x0a", str(k), x) for k, x in v.items()]))
    raise Unencodable(f"an attribute of type {type(v).__name__}")


def _key_value(tag: bytes, key: str, v: Any) -> bytes:
    return _len(tag, _text(b"\x0a", key) + _len(b"\x12", _value(v)))


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
    if not attributes:
        return b""
    out = []
    for k, v in attributes.items():
        t = type(v)
        if t is str or t is int or t is bool:  # (the type in the key: True == 1 as a dict key)
            known = (tag, k, t, v)
            field = _seen.get(known)
            if field is None:
                if len(_seen) >= _SEEN_MAX:
                    _seen.clear()
                field = _seen[known] = _key_value(tag, k, v)
            out.append(field)
        else:
            out.append(_key_value(tag, k, v))
    return b"".join(out)


def _flags(parent: SpanContext | None) -> bytes:
    remote = parent is not None and parent.is_remote
    return _I(_HAS_IS_REMOTE | _IS_REMOTE if remote else _HAS_IS_REMOTE)


# a span's last fields as most spans have them: its status unset, its flags (field 16,
# fixed32: a two-byte tag) for a parent in this process or none, and for a remote one
_UNSET = b"\x7a\x00"
_LOCAL_CHILD = b"\x85\x01" + _flags(None)
_REMOTE_CHILD = b"\x85\x01" + _I(_HAS_IS_REMOTE | _IS_REMOTE)


def _status(status: Status) -> bytes:
    code, message = status.status_code.value, status.description
    return _len(b"\x7a", (_text(b"\x12", message) if message else b"") + _varint_field(0x18, code))


def _varint_field(tag: int, n: int) -> bytes:
    """A varint field (`tag`: field number << 3), left out at 0 as proto3 leaves it."""
    return _SMALL[tag] + _varint(n) if n else b""


def _link(link: Link) -> bytes:
    c = link.context
    body = (  # (no trace state: the SDK's encoder sends none for a link)
        b"\x0a\x10"
        + c.trace_id.to_bytes(16, "big")
        + b"\x12\x08"
        + c.span_id.to_bytes(8, "big")
        + _attributes(b"\x22", link.attributes)
        + _varint_field(0x28, link.dropped_attributes)
        + b"\x35"
        + _flags(c)
    )
    return _len(b"\x6a", body)


def _span(s: ReadableSpan) -> bytes:
    c = s.context
    assert c is not None  # (an ended span always has one)
    parent = s.parent
    out = [b"\x0a\x10", c.trace_id.to_bytes(16, "big"), b"\x12\x08", c.span_id.to_bytes(8, "big")]
    if c.trace_state:
        out.append(_text(b"\x1a", ",".join([f"{k}={v}" for k, v in c.trace_state.items()])))
    if parent is not None:
        out.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
    out += (b"\x39", _Q(s.start_time or 0), b"\x41", _Q(s.end_time or 0), _shape(s))
    return b"".join(out)


def _shape(s: ReadableSpan) -> bytes:
    """A span's fields but its ids, parent and times (protobuf takes fields in any order): the
    same for most spans of one kind (a name, a route, a model, a batch size, a status), so
    looked up where a span of that shape was encoded before, encoded and kept otherwise.

    Keyed by what the shape is made of, read from the span's own fields where it is a plain
    `ReadableSpan` with a dict of attributes and empty tuples of events and links (what
    `service/spans.py` makes: nothing can have been dropped); any other span is encoded in
    full."""
    attributes = getattr(s, "_attributes", None)
    events, links = getattr(s, "_events", None), getattr(s, "_links", None)
    if (
        type(s) is not ReadableSpan
        or type(attributes) is not dict
        or type(events) is not tuple
        or events
        or type(links) is not tuple
        or links
    ):
        if s.events:
            raise Unencodable("a span with events")
        return _shape_of(s)
    status, parent = s._status, s._parent
    try:
        key = (
            s._name,
            id(s._kind),  # (members are singletons; an enum's hash is computed in Python)
            id(status.status_code),
            status.description,
            parent is not None and parent.is_remote,
            tuple(attributes.items()),
            tuple(map(type, attributes.values())),  # (True == 1: the type tells them apart)
        )
        shape = _shapes.get(key)
    except TypeError:  # an unhashable value
        return _shape_of(s)
    if shape is None:
        if len(_shapes) >= _SEEN_MAX:
            _shapes.clear()
        shape = _shapes[key] = _shape_of(s)
    return shape


def _shape_of(s: ReadableSpan) -> bytes:
    status, parent = s.status, s.parent
    return b"".join(
        [
            _text(b"\x2a", s.name) if s.name else b"",
            b"\x30",
            _KIND[s.kind],
            _attributes(b"\x4a", s.attributes),
            _varint_field(0x50, s.dropped_attributes),
            _varint_field(0x60, s.dropped_events),
            *[_link(x) for x in s.links],
            _varint_field(0x70, s.dropped_links),
            _UNSET
            if status.status_code is StatusCode.UNSET and not status.description
            else _status(status),
            _REMOTE_CHILD if parent is not None and parent.is_remote else _LOCAL_CHILD,  # field 16
        ]
    )


def _scope(scope: InstrumentationScope | None) -> bytes:
    if scope is None:
        return b""
    return (
        (_text(b"\x0a", scope.name) if scope.name else b"")
        + (_text(b"\x12", scope.version) if scope.version else b"")
        + _attributes(b"\x1a", scope.attributes)
    )


def encode(spans: Sequence[ReadableSpan]) -> bytes:
    """An `ExportTraceServiceRequest` of `spans`, serialized: this module's (`encoded`), or
    the SDK encoder's where this one does not encode a span."""
    try:
        return encoded(spans)
    except Exception:  # (Unencodable, or what encoding a value raised: a string with a lone
        # surrogate, a key that is not a string; the SDK's encoder drops just that attribute,
        # with a log line, and sends the rest, where an error here would lose the batch)
        theirs: bytes = encode_spans(spans).SerializeToString()
        return theirs


def encoded(spans: Sequence[ReadableSpan]) -> bytes:
    """`spans` as the SDK's `encode_spans` makes them (grouped by resource, then by
    instrumentation scope, in the order they first appear), serialized; `Unencodable` where a
    span has what this module does not encode."""
    groups: dict[Resource, dict[InstrumentationScope | None, list[bytes]]] = {}
    last: tuple[Resource | None, InstrumentationScope | None] = (None, None)
    rows: list[bytes] = []
    for s in spans:
        resource, scope = s.resource, s.instrumentation_scope
        if resource is not last[0] or scope is not last[1]:  # (a process's spans share both)
            last = (resource, scope)
            by_scope = groups.get(resource)
            if by_scope is None:
                by_scope = groups[resource] = {}
            found = by_scope.get(scope or None)
            if found is None:
                found = by_scope[scope or None] = []
            rows = found
        rows.append(_len(b"\x12", _span(s)))
    out = []
    for resource, by_scope in groups.items():
        body = [_len(b"\x0a", _attributes(b"\x0a", resource.attributes))]
        for scope, rows in by_scope.items():
            schema = scope.schema_url if scope is not None else ""
            body.append(
                _len(
                    b"\x12",
                    _len(b"\x0a", _scope(scope))
                    + b"".join(rows)
                    + (_text(b"\x1a", schema) if schema else b""),
                )
            )
        if resource.schema_url:
            body.append(_text(b"\x1a", resource.schema_url))
        out.append(_len(b"\x0a", b"".join(body)))
    return b"".join(out)


class _RawStub:
    """The OTLP trace service's `Export` taking the request as bytes (what `encode` made)."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.Export = channel.unary_unary(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            request_serializer=None,  # (bytes go as they are)
            response_deserializer=ExportTraceServiceResponse.FromString,
        )


class GrpcSpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/gRPC span exporter (its settings, retries, reconnection and metrics),
    sending what `encode` makes."""

    def _initialize_channel_and_stub(self) -> None:
        super()._initialize_channel_and_stub()  # type: ignore[no-untyped-call]
        self._client = _RawStub(self._channel)  # type: ignore[assignment]

    def _translate_data(self, data: Sequence[ReadableSpan]) -> bytes:  # type: ignore[override]
        return encode(data)


def faster(exporter: type[SpanExporter]) -> type[SpanExporter]:
    """The exporter to make where the SDK's configuration names `exporter`: this module's for
    OTLP over gRPC (the default protocol); any other as named (OTLP over HTTP keeps the SDK's
    encoder: its exporter encodes inside `export`, with no hook to replace)."""
    return GrpcSpanExporter if exporter is OTLPSpanExporter else exporter
