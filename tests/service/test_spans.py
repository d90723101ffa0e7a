"""The spans (service/spans.py) with the SDK's samplers: a request's root span is sampled once,
its children follow it, an unsampled request makes no span (and still logs its caller's trace
id), and unsampled feeds keep running in batches over the wire. Real requests, the SDK's
in-memory exporter at the seam."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import (
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    format_trace_id,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from service import tracing
from service.protocol.ops import Feed
from service.spans import root_drops
from tests.service.conftest import LM, ClientFactory, app_of, new_session
from tests.service.test_tracing import TRACE, TRACEPARENT, Records, access_log

__all__ = ["access_log"]  # the fixture, used by name

Sampled = Callable[[str, str | None], InMemorySpanExporter]


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sampled]:
    """`traced(sampler, arg)`: tracing on in this process with the SDK's sampler of that name
    (as `OTEL_TRACES_SAMPLER[_ARG]` name it), every span kept in memory."""

    def on(sampler: str, arg: str | None = None) -> InMemorySpanExporter:
        monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
        if arg is not None:
            monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", arg)
        exporter = InMemorySpanExporter()
        tracing.configure("server", processor=SimpleSpanProcessor(exporter))
        return exporter

    try:
        yield on
    finally:
        tracing.shutdown()


async def test_an_unsampled_request_makes_no_span_and_logs_its_callers_trace(
    make_client: ClientFactory, traced: Sampled, access_log: Records
) -> None:
    spans = traced("always_off", None)
    async with make_client(engine_transport="zmq") as c:
        sid = (await new_session(c))["session_id"]
        headers = {"traceparent": TRACEPARENT}
        r = await c.post(f"/v1/sessions/{sid}/feed", json={"text": "Hi"}, headers=headers)
        assert r.status_code == 200, r.text
        r = await c.post(f"/v1/sessions/{sid}/feed", json={"text": "!"})
        assert r.status_code == 200, r.text
    assert spans.get_finished_spans() == ()
    logged = [vars(x) for x in access_log.records if x.msg == "request"]
    feeds = [line for line in logged if line["route"].endswith("/feed")]
    assert [line.get("trace_id") for line in feeds] == [TRACE, None]


@pytest.mark.parametrize(("flags", "made"), [("00", False), ("01", True)])
async def test_the_callers_sampling_decision_is_followed(
    make_client: ClientFactory, traced: Sampled, flags: str, made: bool
) -> None:
    """The SDK's default sampler (`parentbased_always_on`): the caller's flag decides."""
    spans = traced("parentbased_always_on", None)
    async with make_client() as c:
        sid = (await new_session(c))["session_id"]
        headers = {"traceparent": f"{TRACEPARENT[:-2]}{flags}"}
        r = await c.post(f"/v1/sessions/{sid}/feed", json={"text": "Hi"}, headers=headers)
        assert r.status_code == 200, r.text
    of_trace = [
        s for s in spans.get_finished_spans() if format_trace_id(s.context.trace_id) == TRACE
    ]
    assert bool(of_trace) is made
    assert all(s.context.trace_flags.sampled for s in of_trace)


async def test_at_any_ratio_a_trace_is_whole_or_absent(
    make_client: ClientFactory, traced: Sampled
) -> None:
    """`traceidratio` 0.5 over the wire: each request's spans, in the worker and in the engine,
    all there or none (the children follow the root's decision, never sampled anew)."""
    spans = traced("traceidratio", "0.5")
    async with make_client(engine_transport="zmq") as c:
        sid = (await new_session(c))["session_id"]
        for _ in range(40):
            r = await c.post(f"/v1/sessions/{sid}/feed", json={"text": "a"})
            assert r.status_code == 200, r.text
    by_trace: dict[int, list[str]] = defaultdict(list)
    for s in spans.get_finished_spans():
        by_trace[s.context.trace_id].append(s.name)
    feeds = [names for names in by_trace.values() if any(n.endswith("/feed") for n in names)]
    assert 0 < len(feeds) < 40  # (each way: 2^-40)
    whole = [
        "HTTP POST /v1/sessions/{session_id}/feed",
        "engine Feed",
        "prefill batch",
        "queue wait",
        "store.commit",
        "store.get",
        "wire Feed",
    ]
    assert all(sorted(names) == whole for names in feeds), feeds


async def test_unsampled_feeds_still_run_in_batches(
    make_client: ClientFactory, traced: Sampled
) -> None:
    """A traced store keeps its store's local locks: feeds read together from one worker run
    as one batch with tracing on, as without it."""
    traced("always_off", None)
    async with make_client(engine_transport="zmq") as c:
        local = app_of(c).state.local
        batch = local.batcher(Feed)
        assert batch is not None
        sizes: list[int] = []

        async def counted(ops: Any, *rest: Any) -> None:
            sizes.append(len(ops))
            await batch(ops, *rest)

        local._batchers[Feed] = counted
        sids = [(await new_session(c, LM))["session_id"] for _ in range(16)]
        answers = await asyncio.gather(
            *(c.post(f"/v1/sessions/{sid}/feed", json={"text": "ab"}) for sid in sids)
        )
    assert [r.status_code for r in answers] == [200] * 16
    assert [r.json()["version"] for r in answers] == [1] * 16
    assert sizes and max(sizes) > 1, sizes


def test_a_span_names_itself_as_the_w3c_parent_and_keeps_an_ok_status(
    traced: Sampled,
) -> None:
    spans = traced("always_on", None)
    with tracing.server_span("grpc Feed", {"traceparent": TRACEPARENT}) as server:
        assert server is not None
        client, carrier = tracing.client_span("wire Feed")
        client.set_status(Status(StatusCode.OK))
        client.set_status(Status(StatusCode.ERROR, "late"))  # OK is final, as the SDK's
        tracing.end_span(client)
    ctx = client.get_span_context()
    expected: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(
        expected,
        tracing._w3c.extract(carrier),  # (what the engine end reads back)
    )
    assert carrier == expected
    assert carrier["traceparent"] == f"00-{TRACE}-{ctx.span_id:016x}-01"
    (wire,) = [s for s in spans.get_finished_spans() if s.name == "wire Feed"]
    assert wire.status.status_code is StatusCode.OK
    assert wire.parent == server.context and isinstance(wire.parent, SpanContext)
    assert wire.context.trace_flags == TraceFlags(TraceFlags.SAMPLED)


async def test_sampled_feeds_in_a_batch_each_keep_their_whole_trace(
    make_client: ClientFactory, traced: Sampled
) -> None:
    """Sampled feeds run in the feed batch too; each one's store calls, queue wait and prefill
    batch are children of its own `engine Feed` span (two feeds on one session: the second
    waits in its line, in the batch or on its own; `test_feeds.py` makes it wait in one)."""
    spans = traced("always_on", None)
    async with make_client(engine_transport="zmq") as c:
        local = app_of(c).state.local
        batch = local.batcher(Feed)
        assert batch is not None
        traced_sizes: list[int] = []

        async def counted(ops: Any, reply: Any, gone: Any, traces: Any = None) -> None:
            if traces is not None:
                traced_sizes.append(sum(t is not None for t in traces))
            await batch(ops, reply, gone, traces)

        local._batchers[Feed] = counted
        sids = [(await new_session(c, LM))["session_id"] for _ in range(8)]
        answers = await asyncio.gather(
            *(c.post(f"/v1/sessions/{sid}/feed", json={"text": "ab"}) for sid in [*sids, sids[0]])
        )
    assert [r.status_code for r in answers] == [200] * 9
    assert sorted(r.json()["version"] for r in answers) == [1] * 8 + [2]
    assert traced_sizes and max(traced_sizes) > 1, traced_sizes
    by_trace: dict[int, list[Any]] = defaultdict(list)
    for s in spans.get_finished_spans():
        by_trace[s.context.trace_id].append(s)
    feed = "HTTP POST /v1/sessions/{session_id}/feed"
    feeds = [t for t in by_trace.values() if any(s.name == feed for s in t)]
    assert len(feeds) == 9
    for t in feeds:
        one = {s.name: s for s in t}
        assert len(one) == len(t) == 7, sorted(s.name for s in t)  # each name once
        http, wire, engine = one[feed], one["wire Feed"], one["engine Feed"]
        assert wire.parent == http.context and engine.parent.span_id == wire.context.span_id
        for name in ("store.get", "queue wait", "prefill batch", "store.commit"):
            assert one[name].parent == engine.context, name
        assert engine.end_time >= one["store.commit"].end_time


def test_a_request_on_a_sampled_stream_is_a_trace_of_its_own_sampled_or_not(
    traced: Sampled,
) -> None:
    """An unsampled request on a sampled gRPC stream (`linked_span`) has no current span: its
    calls make none, and nothing lands in the stream's trace."""
    spans = traced("always_on", None)
    pipeline = tracing._pipeline
    assert pipeline is not None

    class ByName(Sampler):  # the stream sampled, its requests not
        def should_sample(self, parent: Any, trace_id: int, name: str, *a: Any, **k: Any) -> Any:
            return SamplingResult(Decision.RECORD_AND_SAMPLE if name == "stream" else Decision.DROP)

        def get_description(self) -> str:
            return "by name"

    tracing._pipeline = dataclasses.replace(pipeline, sampler=ByName())
    with tracing.server_span("stream") as stream:
        assert stream is not None
        with tracing.linked_span("request") as request:
            assert request is None and tracing.capture() is None
        assert tracing.capture() == stream.context
    assert [s.name for s in spans.get_finished_spans()] == ["stream"]
    (done,) = spans.get_finished_spans()
    # a root's trace id is random, and its flags say so (W3C level 2), as the SDK's do
    assert done.context.trace_flags == TraceFlags(TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID)


def test_a_call_under_no_span_runs_under_none_whatever_is_current(traced: Sampled) -> None:
    """A feed batch's unsampled member's record calls are no span's children, even in a task
    where another span is current."""
    traced("always_on", None)
    with tracing.server_span("batch") as outer:
        assert outer is not None
        assert tracing.call_under(None, tracing.capture) is None
        inner = SpanContext(outer.context.trace_id, 0x1234, False, TraceFlags(1))
        assert tracing.call_under(inner, tracing.capture) == inner
        assert tracing.capture() == outer.context
    assert tracing.call_under(None, tracing.capture) is None


class _Fixed(RandomIdGenerator):
    """The SDK's ids, with the trace id a test chose."""

    def __init__(self, trace_id: int) -> None:
        self.trace_id = trace_id

    def generate_trace_id(self) -> int:
        return self.trace_id


@pytest.mark.parametrize(
    ("sampler", "arg", "shortcut"),
    [
        ("traceidratio", "0.1", True),
        ("parentbased_traceidratio", "0.1", True),
        ("parentbased_traceidratio", "0.5", True),
        ("traceidratio", "0", True),
        ("parentbased_traceidratio", "1", True),
        ("always_off", None, True),
        ("parentbased_always_off", None, True),
        ("always_on", None, False),
        ("parentbased_always_on", None, False),
    ],
)
def test_a_root_is_sampled_exactly_when_the_sdks_sampler_samples_it(
    traced: Sampled,
    monkeypatch: pytest.MonkeyPatch,
    sampler: str,
    arg: str | None,
    shortcut: bool,
) -> None:
    """The shortcut that decides a root without the sampler's objects (`root_drops`) agrees
    with the sampler, on random trace ids and on those at the ratio's bound."""
    traced(sampler, arg)
    pipeline = tracing._pipeline
    assert pipeline is not None
    assert (pipeline.drops is not None) is shortcut
    rng = random.Random(31)
    bound = getattr(getattr(pipeline.sampler, "_root", pipeline.sampler), "bound", 1 << 63)
    low = [max(bound + d, 0) & (2**64 - 1) for d in (-2, -1, 0, 1, 2)]
    ids = [rng.getrandbits(128) for _ in range(4000)] + [(7 << 64) | x for x in low]
    decide = pipeline.sampler.should_sample
    asked = 0

    def counted(*a: Any, **k: Any) -> SamplingResult:
        nonlocal asked
        asked += 1
        return decide(*a, **k)

    made = 0
    for trace_id in ids:
        sdk = decide(None, trace_id, "HTTP POST").decision
        with monkeypatch.context() as m:  # (the instance's: the shortcut still applies)
            m.setattr(pipeline.sampler, "should_sample", counted)
            span = dataclasses.replace(pipeline, ids=_Fixed(trace_id)).root(
                "HTTP POST", None, SpanKind.SERVER
            )
        assert (span is not None) is (sdk is Decision.RECORD_AND_SAMPLE), hex(trace_id)
        made += span is not None
    if arg not in (None, "0", "1"):  # both decisions were taken
        assert 0 < made < len(ids)
    # with the shortcut the sampler is asked about the roots it samples, and no other
    assert asked == (made if shortcut else len(ids))


def test_a_sampler_that_decides_otherwise_is_always_asked() -> None:
    class Odd(TraceIdRatioBased):  # the ratio's type, another decision
        def should_sample(self, *a: Any, **k: Any) -> SamplingResult:
            return SamplingResult(Decision.RECORD_AND_SAMPLE)

    assert root_drops(Odd(0.1)) is None
    assert root_drops(ParentBased(Odd(0.1))) is None
    assert root_drops(TraceIdRatioBased(0.1)) is not None
