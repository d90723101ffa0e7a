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
start, and touches no OpenTelemetry object. The spans go to this module's own provider, not the
global one (`opentelemetry.trace.set_tracer_provider` may be called once per process, and the
tests install an in-memory exporter at this seam: `configure(role, processor=...)`).

Context crosses process and thread boundaries explicitly: W3C `traceparent` / `tracestate` from
an HTTP request's headers (or any carrier: `server_span`), in the wire's `Call` frame, and on a
prefill job or a decode stream for the engine thread, which runs outside the event loop's
context.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

Role = Literal["engine", "worker", "server"]  # server: engine and API in one process
ROLE = "rnnserve.role"  # the resource attribute naming a process's role
DEFAULT_SERVICE_NAME = "rnnserve"

enabled = False  # read (as `tracing.enabled`) before touching anything below on the hot path
_provider: TracerProvider | None = None
_tracer: trace.Tracer = trace.NoOpTracer()
_w3c = TraceContextTextMapPropagator()  # W3C trace context: what is read and what is sent


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
    global _provider, _tracer, enabled
    if processor is None and not wanted():
        return False
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    processors = (
        [processor] if processor is not None else [BatchSpanProcessor(e()) for e in exporters()]
    )
    shutdown()
    # the sampler is the SDK's own reading of OTEL_TRACES_SAMPLER / _ARG (sampler=None)
    provider = TracerProvider(resource=resource(role), shutdown_on_exit=False)
    for p in processors:
        provider.add_span_processor(p)
    _provider, _tracer = provider, provider.get_tracer("rnnserve")
    enabled = True
    return True


def shutdown() -> None:
    """Export what is pending and turn tracing off (a process calls this as it stops: a
    multiprocessing child exits without running `atexit`)."""
    global _provider, _tracer, enabled
    enabled = False
    provider, _provider, _tracer = _provider, None, trace.NoOpTracer()
    if provider is not None:
        provider.shutdown()


# -- spans ----------------------------------------------------------------------------------


class _Current:
    """`span` current (attached) for a `with` block and ended after it; an exception leaving
    the block marks it as an error (and goes on). Lighter than the SDK's
    `start_as_current_span`, three generator context managers deep."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: Span) -> None:
        self._span = span

    def __enter__(self) -> Span:
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self._span

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None, _: Any) -> None:
        otel_context.detach(self._token)
        if e is not None:
            self._span.set_status(Status(StatusCode.ERROR, type(e).__name__))
        self._span.end()


@contextlib.contextmanager
def server_span(
    name: str, carrier: Mapping[str, str] | None = None, attributes: Attributes = None
) -> Iterator[Span | None]:
    """A SERVER span for a request that came in by `carrier` (its W3C `traceparent` and
    `tracestate`, lower-case keys: HTTP headers, gRPC metadata as a dict), current for the
    block: every `EngineClient` call made inside it carries it to the engine. Yields the span,
    or None with tracing off (then nothing is read and nothing is started). An exception
    leaving the block marks the span as an error and goes on."""
    if not enabled:
        yield None
        return
    parent = _w3c.extract(carrier) if carrier else None
    with _Current(
        _tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)
    ) as s:
        yield s


def span(name: str, attributes: Attributes = None) -> _Current:
    """An INTERNAL span child of the current one, current for the `with` block (call only
    when `enabled`)."""
    return _Current(_tracer.start_span(name, attributes=attributes))


def linked_span(name: str, attributes: Attributes = None) -> _Current:
    """A SERVER span that starts a trace of its own, linked to the current span, current for
    the `with` block (call only when `enabled`): a request on a long-lived stream, sampled and
    bounded on its own (one trace per stream would be all or nothing, and unbounded), and
    found from the stream's span by the link."""
    current = trace.get_current_span().get_span_context()
    return _Current(
        _tracer.start_span(
            name,
            context=otel_context.Context(),  # no parent: a root, sampled anew
            kind=SpanKind.SERVER,
            attributes=attributes,
            links=[trace.Link(current)] if current.is_valid else None,
        )
    )


def remote_span(name: str, carrier: Mapping[str, str], attributes: Attributes = None) -> _Current:
    """The SERVER span of a call whose caller sent `carrier`, current for the `with` block."""
    return _Current(
        _tracer.start_span(
            name, context=_w3c.extract(carrier), kind=SpanKind.SERVER, attributes=attributes
        )
    )


def carrier_of(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The W3C trace context headers of an ASGI request."""
    out = {}
    for k, v in headers:
        if k == b"traceparent" or k == b"tracestate":
            out[k.decode()] = bytes(v).decode("latin-1")
    return out


class RequestSpan:
    """An HTTP request's SERVER span, current (attached) from its start until `end`, which
    names it by its route once the router has matched one. An unsampled one is never made
    current: the calls it makes then see no recording span and start none."""

    __slots__ = ("_token", "remote", "span")

    def __init__(self, method: str, headers: list[tuple[bytes, bytes]]) -> None:
        carrier = carrier_of(headers)
        parent = _w3c.extract(carrier) if carrier else None
        # a valid incoming context: the caller's trace id is worth logging even unsampled
        self.remote = (
            parent is not None and trace.get_current_span(parent).get_span_context().is_valid
        )
        self.span = s = _tracer.start_span(f"HTTP {method}", context=parent, kind=SpanKind.SERVER)
        self._token = (
            otel_context.attach(trace.set_span_in_context(s)) if s.is_recording() else None
        )

    def end(self, route: str, method: str, status: int) -> str | None:
        """End it; the trace id to log (hex): when it was sampled, or the caller sent one."""
        s = self.span
        if self._token is None:  # not sampled: nothing was recorded
            ctx = s.get_span_context()
            return trace.format_trace_id(ctx.trace_id) if self.remote else None
        otel_context.detach(self._token)
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
        return trace.format_trace_id(s.get_span_context().trace_id)


def client_span(name: str, attributes: Attributes = None) -> tuple[Span, dict[str, str]]:
    """A CLIENT span child of the current one (a call leaving for the engine) and the W3C
    carrier that makes the other end's span its child (call only when `enabled`)."""
    s = _tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
    carrier: dict[str, str] = {}
    _w3c.inject(carrier, trace.set_span_in_context(s))
    return s, carrier


def end_span(s: Span, error: BaseException | None = None) -> None:
    if error is not None:
        s.set_status(Status(StatusCode.ERROR, type(error).__name__))
    s.end()


def capture() -> Context | None:
    """The current context when its span records (a sampled request), for work handed to
    another thread; else None (call only when `enabled`)."""
    if trace.get_current_span().is_recording():
        return otel_context.get_current()
    return None


def record(
    name: str,
    parent: Context,
    start_ns: int,
    end_ns: int,
    attributes: Attributes = None,
    error: BaseException | None = None,
) -> None:
    """A span that already happened (the engine thread's: a queue wait, a batch), child of
    `parent`. Thread-safe."""
    s = _tracer.start_span(name, context=parent, attributes=attributes, start_time=start_ns)
    if error is not None:
        s.set_status(Status(StatusCode.ERROR, type(error).__name__))
    s.end(end_time=end_ns)


def start(name: str, parent: Context, attributes: Attributes = None) -> Span:
    """A span child of `parent`, ended by its owner (a decode stream's)."""
    return _tracer.start_span(name, context=parent, attributes=attributes)


def now_ns() -> int:
    return time.time_ns()
