"""The spans rnnserve makes (`service/tracing.py` decides when): its own small span object,
sampled by the SDK's sampler, numbered by the SDK's id generator and, once ended, handed to
the SDK's span processors (batching, export) as the SDK's own `ReadableSpan`.

Why not the SDK's `Tracer`: on this project's 2-core VM its `start_span` costs 15-30 us a
span (the sampler for every span, span limits, a lock, attribute validation, a `Span` and then
a `ReadableSpan` copy at its end) and an unsampled request's non-recording span ~5 us. A
session step is ~300 us of server CPU and makes 5-7 spans when sampled, so that was most of
what tracing at 10 % cost. Here a request's root span consults the sampler once; its
children are sampled with it (as `ParentBased`, the SDK's default, decides them, and as
`traceidratio` does, by the trace id they share); an unsampled request makes no object at
all, and with the SDK's ratio (or always-off) sampler it does not even ask the sampler,
whose answer is built of objects: one comparison of the trace id decides (`root_drops`).
What is given up: span limits (the attributes are this project's own few scalars) and
`on_start` (the processors here act at the end), and a sampler's `RECORD_ONLY` decision is
taken as "not sampled" (a span not sampled is never exported).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    StaticSampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import (
    Link,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    get_current_span,
)
from opentelemetry.util.types import Attributes

if TYPE_CHECKING:
    from collections.abc import Sequence

    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.sdk.trace.id_generator import IdGenerator
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

_UNSET = Status(StatusCode.UNSET)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
# W3C level 2's flag that the trace id is random, set as the SDK sets it
_SAMPLED_RANDOM = TraceFlags(TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID)
_NO_PARENT = Context()  # (the sampler then decides a root, whatever the OTel API's context)


class HashedOnce(Resource):
    """The SDK's `Resource`, its hash computed once: the OTLP exporter groups the spans of an
    export by resource, hashing each span's, and the SDK's hash serialises the attributes to
    JSON every time (5 of the 18 us a span cost to encode on this project's VM). A resource
    never changes."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource.attributes, resource.schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash


@dataclass(frozen=True, slots=True)
class Pipeline:
    """What spans need of a configured SDK provider: its sampler, ids, span processors,
    resource and instrumentation scope."""

    sampler: Sampler
    ids: IdGenerator
    processors: tuple[SpanProcessor, ...]
    resource: Resource
    scope: InstrumentationScope
    # what the sampler decides for a root, where a cheap test knows it (`root_drops`)
    drops: Callable[[int], bool] | None = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "drops", root_drops(self.sampler))

    def root(
        self,
        name: str,
        parent: Context | None,
        kind: SpanKind,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
    ) -> Span | None:
        """A span with no parent in this process (a request come in, a call's far end), or
        None when the sampler does not sample it. `parent`: the caller's context (W3C,
        extracted), whose trace it joins when valid."""
        remote: SpanContext | None = None
        if parent is not None:
            remote = get_current_span(parent).get_span_context()
            if not remote.is_valid:
                remote, parent = None, None
        trace_id = remote.trace_id if remote is not None else self.ids.generate_trace_id()
        if remote is None and self.drops is not None and self.drops(trace_id):
            return None  # (the sampler's decision: it is asked for those it samples)
        decided = self.sampler.should_sample(
            parent or _NO_PARENT, trace_id, name, kind, attributes, links
        )
        if decided.decision is not Decision.RECORD_AND_SAMPLE:
            return None
        random = (
            remote.trace_flags.random_trace_id
            if remote is not None
            else self.ids.is_trace_id_random()
        )
        context = SpanContext(
            trace_id,
            self.ids.generate_span_id(),
            is_remote=False,
            trace_flags=_SAMPLED_RANDOM if random else _SAMPLED,
            trace_state=decided.trace_state,
        )
        attrs = dict(attributes) if attributes else {}
        if decided.attributes:
            attrs.update(decided.attributes)
        return Span(self, name, context, remote, kind, attrs, links)

    def child(
        self,
        name: str,
        parent: SpanContext,
        attributes: Attributes = None,
        kind: SpanKind = SpanKind.INTERNAL,
        start_ns: int | None = None,
    ) -> Span:
        """A span child of a sampled one (so sampled too), on any thread."""
        context = SpanContext(
            parent.trace_id,
            self.ids.generate_span_id(),
            is_remote=False,
            trace_flags=parent.trace_flags,
            trace_state=parent.trace_state,
        )
        attrs = dict(attributes) if attributes else {}
        return Span(self, name, context, parent, kind, attrs, None, start_ns)


def root_drops(sampler: Sampler) -> Callable[[int], bool] | None:
    """For the SDK's own samplers, a test of whether the sampler drops a root span (one with no
    parent) of this trace id: `should_sample`'s decision without the objects it builds to say
    it (~2 us, for each of the 90 % of requests that `traceidratio` 0.1 drops: a few percent
    of a session step's server CPU). None: the sampler is always asked (a sampler of another
    kind, or one that samples every root). A subclass that decides otherwise is asked too."""
    root = sampler
    if isinstance(sampler, ParentBased) and _decides_as(sampler, ParentBased):
        root = sampler._root  # a root has no parent: the root sampler decides (as `should_sample`)
    if isinstance(root, TraceIdRatioBased) and _decides_as(root, TraceIdRatioBased):
        bound, mask = root.bound, root.TRACE_ID_LIMIT
        return lambda trace_id: trace_id & mask >= bound
    dropping = isinstance(root, StaticSampler) and root._decision is Decision.DROP
    if dropping and _decides_as(root, StaticSampler):
        return lambda trace_id: True
    return None


def _decides_as(sampler: Sampler, cls: type[Sampler]) -> bool:
    return type(sampler).should_sample is cls.should_sample


class Span:
    """A sampled span being recorded: what the SDK's `Span` offers that this project uses
    (attributes, status, a new name, its context), ended once by one thread."""

    __slots__ = (
        "_attributes",
        "_ended",
        "_kind",
        "_links",
        "_parent",
        "_pipeline",
        "_start_ns",
        "_status",
        "context",
        "name",
    )

    def __init__(
        self,
        pipeline: Pipeline,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, Any],
        links: Sequence[Link] | None,
        start_ns: int | None = None,
    ) -> None:
        self._pipeline = pipeline
        self.name = name
        self.context = context
        self._parent = parent
        self._kind = kind
        self._attributes = attributes
        self._links = links
        self._status = _UNSET
        self._start_ns = time.time_ns() if start_ns is None else start_ns
        self._ended = False

    def get_span_context(self) -> SpanContext:
        return self.context

    def update_name(self, name: str) -> None:
        self.name = name

    def set_attribute(self, key: str, value: Any) -> None:
        self._attributes[key] = value

    def set_attributes(self, attributes: dict[str, Any]) -> None:
        self._attributes.update(attributes)

    def set_status(self, status: Status) -> None:
        """As the SDK's: OK is final, UNSET changes nothing."""
        if self._status.status_code is StatusCode.OK or status.status_code is StatusCode.UNSET:
            return
        self._status = status

    def carrier(self) -> dict[str, str]:
        """The W3C trace context naming this span as the parent (sent with a call)."""
        c = self.context
        out = {"traceparent": f"00-{c.trace_id:032x}-{c.span_id:016x}-{int(c.trace_flags):02x}"}
        if c.trace_state:
            out["tracestate"] = c.trace_state.to_header()
        return out

    def end(self, end_ns: int | None = None) -> None:
        """Hand it to the span processors; a second end does nothing (as the SDK's)."""
        if self._ended:
            return
        self._ended = True
        p = self._pipeline
        done = ReadableSpan(
            name=self.name,
            context=self.context,
            parent=self._parent,
            resource=p.resource,
            attributes=self._attributes,
            links=self._links or (),
            kind=self._kind,
            status=self._status,
            start_time=self._start_ns,
            end_time=time.time_ns() if end_ns is None else end_ns,
            instrumentation_scope=p.scope,
        )
        for processor in p.processors:
            processor.on_end(done)

    def __enter__(self) -> Span:
        return self

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None, _: Any) -> None:
        """Ended as the block ends; an exception leaving it marks it as an error (and goes on)."""
        if e is not None:
            self.set_status(Status(StatusCode.ERROR, type(e).__name__))
        self.end()
