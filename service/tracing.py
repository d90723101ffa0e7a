"""OpenTelemetry tracing: off unless the standard environment turns it on, and then one trace per
request across the worker, the wire and the engine (docs/deploy.md, "Tracing").

`configure(role)` runs once as each process starts (the engine process, each API worker, the one
process at `--workers 0`). It turns tracing on when `OTEL_TRACES_EXPORTER` names an exporter
(not `none`) or `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, and
then leaves every other choice to the SDK, which reads its own variables: the exporters by the
SDK's autoconfiguration (`otlp` over the protocol `OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL` names,
gRPC by default; `console`), the sampler (`OTEL_TRACES_SAMPLER[_ARG]`), the batch processor
(`OTEL_BSP_*`), the resource (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`) and the exporters'
endpoint, headers and timeouts. Every span carries this process's `process.pid` and its role.

Off, the request path pays one check of the module's `enabled` flag at each place a span could
start, and touches no OpenTelemetry object. On, the spans are `service/spans.py`'s (the SDK's
sampler, ids, processors and exporters; a lighter span object than the SDK's `Tracer` makes):
a request's root span asks the sampler once, its children follow it, and an unsampled
request makes nothing but that decision. OTLP over gRPC is sent by `service/span_export.py`'s
exporter (the SDK's, encoding 4x faster). The spans go to this module's own provider, not the
global one (`opentelemetry.trace.set_tracer_provider` may be called once per process, and the
tests install an in-memory exporter at this seam: `configure(role, processor=...)`).

The current span is this module's own context variable (`capture()`), set only while a sampled
span is current. Context crosses process and thread boundaries explicitly: W3C `traceparent` / `tracestate` from
an HTTP request's headers (or any carrier: `server_span`), in the wire's `Call` frame, and on a
prefill job or a decode stream for the engine thread, which runs outside the event loop's
context.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace import format_trace_id as _hex
from opentelemetry.trace import get_current_span as _span_in
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

    from service.spans import Pipeline
    from service.spans import Span as Span  # (re-exported: `tracing.Span` in annotations)

T = TypeVar("T")
Role = Literal["engine", "worker", "server"]  # server: engine and API in one process
ROLE = "rnnserve.role"  # the resource attribute naming a process's role
DEFAULT_SERVICE_NAME = "rnnserve"

enabled = False  # read (as `tracing.enabled`) before touching anything below on the hot path
_provider: TracerProvider | None = None
_pipeline: Pipeline | None = None  # (set exactly while `enabled`)
_w3c = TraceContextTextMapPropagator()  # W3C trace context: what is read and what is sent
# the span current in this task (a sampled one's context; None: none, or not sampled)
_current: contextvars.ContextVar[SpanContext | None] = contextvars.ContextVar(
    "rnnserve_span", default=None
)


def wanted(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment turns tracing on (see the module's docstring); the SDK's own
    switch, `OTEL_SDK_DISABLED=true`, turns it off whatever else is set."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    names = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if names:
        return names != "none"
    return bool(
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    )


def exporters() -> list[type[SpanExporter]]:
    """The span exporters the environment names, found as the SDK's autoconfiguration finds
    them (its entry points; `otlp` over `OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL`). No
    `OTEL_TRACES_EXPORTER` but an OTLP endpoint: `otlp`, the variable's documented default."""
    from opentelemetry.sdk import _configuration as auto

    names: list[str] = auto._get_exporter_names("traces") or [
        auto._get_exporter_entry_point("otlp", "traces")
    ]
    found: dict[str, type[SpanExporter]] = auto._import_exporters(names, [], [])[0]
    return list(found.values())


def resource(role: Role) -> Resource:
    """`service.name` (`OTEL_SERVICE_NAME`, else `rnnserve`), `OTEL_RESOURCE_ATTRIBUTES`, this
    process's `process.pid` and its role."""
    from opentelemetry.sdk.resources import PROCESS_PID, SERVICE_NAME, Resource

    res = Resource.create({PROCESS_PID: os.getpid(), ROLE: role})
    if str(res.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        res = res.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return res


def configure(role: Role, *, processor: SpanProcessor | None = None) -> bool:
    """Turn tracing on for this process when the environment asks (or with `processor`, the
    tests' seam: its spans go there and nowhere else); whether it is on. Called once as a
    process starts; a second call replaces the first's provider (flushed)."""
    global _provider, _pipeline, enabled
    if processor is None and not wanted():
        return False
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    from service.span_export import faster
    from service.spans import HashedOnce, Pipeline

    processors = (
        [processor]
        if processor is not None
        else [BatchSpanProcessor(faster(e)()) for e in exporters()]
    )
    shutdown()
    # the sampler is the SDK's own reading of OTEL_TRACES_SAMPLER / _ARG (sampler=None); the
    # provider owns the processors (its shutdown flushes them)
    provider = TracerProvider(resource=HashedOnce(resource(role)), shutdown_on_exit=False)
    for p in processors:
        provider.add_span_processor(p)
    _provider = provider
    _pipeline = Pipeline(
        sampler=provider.sampler,
        ids=provider.id_generator,
        processors=tuple(processors),
        resource=provider.resource,
        scope=InstrumentationScope("rnnserve", "", ""),  # as `get_tracer("rnnserve")` names it
    )
    enabled = True
    return True


def shutdown() -> None:
    """Export what is pending and turn tracing off (a process calls this as it stops: a
    multiprocessing child exits without running `atexit`)."""
    global _provider, _pipeline, enabled
    enabled = False
    provider, _provider, _pipeline = _provider, None, None
    if provider is not None:
        provider.shutdown()


# -- spans: roots (a request's, a call's far end), current for a block -----------------------


class _Active:
    """A root `span` current for a `with` block and ended after it; not sampled (None), no
    span is current in the block, whatever was outside it (a request on a sampled gRPC
    stream is a trace of its own, sampled or not). An exception leaving the block marks the
    span as an error (and goes on)."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: Span | None) -> None:
        self._span = span

    def __enter__(self) -> Span | None:
        s = self._span
        self._token = _current.set(s.context if s is not None else None)
        return s

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None, _: Any) -> None:
        _current.reset(self._token)
        s = self._span
        if s is None:
            return
        if e is not None:
            s.set_status(Status(StatusCode.ERROR, type(e).__name__))
        s.end()


def root(
    name: str,
    carrier: Mapping[str, str] | None,
    attributes: Attributes = None,
    links: list[Link] | None = None,
) -> Span | None:
    """A SERVER span, not made current, for a request whose caller sent `carrier` (none: a
    trace of its own), or None when the sampler does not sample it (call only when
    `enabled`)."""
    assert _pipeline is not None
    parent = _w3c.extract(carrier) if carrier else None
    return _pipeline.root(name, parent, SpanKind.SERVER, attributes, links)


@contextlib.contextmanager
def server_span(
    name: str, carrier: Mapping[str, str] | None = None, attributes: Attributes = None
) -> Iterator[Span | None]:
    """A SERVER span for a request that came in by `carrier` (its W3C `traceparent` and
    `tracestate`, lower-case keys: HTTP headers, gRPC metadata as a dict), current for the
    block: every `EngineClient` call made inside it carries it to the engine. Yields the span,
    or None with tracing off or the request not sampled (then nothing is started). An
    exception leaving the block marks the span as an error and goes on."""
    if not enabled:
        yield None
        return
    with _Active(root(name, carrier, attributes)) as s:
        yield s


def linked_span(name: str, attributes: Attributes = None) -> AbstractContextManager[Span | None]:
    """A SERVER span that starts a trace of its own, linked to the current span, current for
    the `with` block (call only when `enabled`): a request on a long-lived stream, sampled and
    bounded on its own (one trace per stream would be all or nothing, and unbounded), and
    found from the stream's span by the link (when that one was sampled)."""
    current = _current.get()
    return _Active(root(name, None, attributes, [Link(current)] if current else None))


def remote_span(
    name: str, carrier: Mapping[str, str], attributes: Attributes = None
) -> AbstractContextManager[Span | None]:
    """The SERVER span of a call whose caller sent `carrier`, current for the `with` block
    (call only when `enabled`)."""
    return _Active(root(name, carrier, attributes))


def carrier_of(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The W3C trace context headers of an ASGI request."""
    out = {}
    for k, v in headers:
        if k == b"traceparent" or k == b"tracestate":
            out[k.decode()] = bytes(v).decode("latin-1")
    return out


def caller_trace_id(carrier: Mapping[str, str]) -> str | None:
    """The trace id (hex) of a valid W3C `traceparent` in `carrier`, sampled or not: the
    caller's trace, worth logging even when this server does not sample it."""
    if "traceparent" not in carrier:
        return None
    ctx = _span_in(_w3c.extract(carrier)).get_span_context()
    return _hex(ctx.trace_id) if ctx.is_valid else None


class RequestSpan:
    """An HTTP request's SERVER span, current from its start until `end`, which names it by its
    route once the router has matched one. Not sampled: nothing is made and nothing is current,
    so the calls it makes start no span."""

    __slots__ = ("_carrier", "_token", "span")

    def __init__(self, method: str, headers: list[tuple[bytes, bytes]]) -> None:
        self._carrier = carrier = carrier_of(headers)
        self.span = s = root(f"HTTP {method}", carrier)
        self._token = _current.set(s.context) if s is not None else None

    def end(self, route: str, method: str, status: int) -> str | None:
        """End it; the trace id to log (hex): when it was sampled, or the caller sent one."""
        s = self.span
        if s is None or self._token is None:
            return caller_trace_id(self._carrier) if self._carrier else None
        _current.reset(self._token)
        s.update_name(f"HTTP {method} {route}")
        s.set_attributes(
            {
                "http.request.method": method,
                "http.route": route,
                "http.response.status_code": status,
            }
        )
        if status >= 500:
            s.set_status(Status(StatusCode.ERROR))
        s.end()
        return _hex(s.context.trace_id)


# -- spans: children of the current (sampled) one, here or on another thread ---------------


def capture() -> SpanContext | None:
    """The current span's context when there is one (a sampled request's): the parent of the
    spans its work makes, on this thread or handed to another; else None."""
    return _current.get()


def context_under(parent: SpanContext) -> contextvars.Context:
    """A copy of the current context with `parent` as the current span: for a task that runs
    one request's work inside another's (a feed that waits in its session's line in a batch)."""
    ctx = contextvars.copy_context()
    ctx.run(_current.set, parent)
    return ctx


def within(parent: SpanContext | None, work: Coroutine[Any, Any, T]) -> Coroutine[Any, Any, T]:
    """`work` with `parent` as its current span (None: `work` as it is): the spans it makes (a
    store call's) are that span's children, in a task that runs several requests' work (a
    feed batch)."""
    return work if parent is None else _within(parent, work)


async def _within(parent: SpanContext, work: Coroutine[Any, Any, T]) -> T:
    token = _current.set(parent)
    try:
        return await work
    finally:
        _current.reset(token)


def call_under(parent: SpanContext | None, call: Callable[..., T], *args: Any) -> T:
    """`call(*args)` with `parent` as the current span (None: none): `within` for a plain call,
    in a task that runs several requests' work (a feed batch's record calls)."""
    if parent is None and _current.get() is None:  # (the common case: nothing to change)
        return call(*args)
    token = _current.set(parent)
    try:
        return call(*args)
    finally:
        _current.reset(token)


def client_span(name: str, attributes: Attributes = None) -> tuple[Span, dict[str, str]]:
    """A CLIENT span child of the current one (a call leaving for the engine) and the W3C
    carrier that makes the other end's span its child (call only when `capture()` is not
    None)."""
    parent = _current.get()
    assert parent is not None and _pipeline is not None
    s = _pipeline.child(name, parent, attributes, SpanKind.CLIENT)
    return s, s.carrier()


def end_span(s: Span, error: BaseException | None = None, end_ns: int | None = None) -> None:
    if error is not None:
        s.set_status(Status(StatusCode.ERROR, type(error).__name__))
    s.end(end_ns)


def record(
    name: str,
    parent: SpanContext,
    start_ns: int,
    end_ns: int,
    attributes: Attributes = None,
    error: BaseException | None = None,
) -> None:
    """A span that already happened (the engine thread's: a queue wait, a batch), child of
    `parent`. Thread-safe."""
    p = _pipeline  # (read once: the loop thread may turn tracing off meanwhile)
    if p is None:
        return
    end_span(p.child(name, parent, attributes, start_ns=start_ns), error, end_ns)


def start(name: str, parent: SpanContext, attributes: Attributes = None) -> Span:
    """A span child of `parent`, ended by its owner (a decode stream's), or by the end of a
    `with` block (a store call's)."""
    assert _pipeline is not None
    return _pipeline.child(name, parent, attributes)


def now_ns() -> int:
    return time.time_ns()
