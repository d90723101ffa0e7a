"""`service/sessions/traced.py`: a traced store's record calls, coroutines and plain calls
alike, are spans of a sampled request (`store.get`, `store.commit`, ...) with the store's
answer or error unchanged, and no span without one."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, StatusCode, TraceFlags

from service import tracing
from service.errors import SessionNotFound, VersionConflict
from service.sessions import IdempotencyRecord, MemoryStore
from service.sessions.traced import TracedRecords, TracedStore
from tests.service.conftest import FakeClock
from tests.service.sessions.test_memory import rec

PARENT = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, False, TraceFlags(1))


def only(spans: InMemorySpanExporter) -> ReadableSpan:
    (s,) = spans.get_finished_spans()
    spans.clear()
    assert s.parent == PARENT and s.context is not None
    assert s.context.trace_id == PARENT.trace_id
    assert s.attributes is not None and s.attributes["db.system.name"] == "MemoryStore"
    return s


async def test_a_sampled_requests_plain_record_calls_are_spans_with_the_stores_answers(
    spans: InMemorySpanExporter, clock: FakeClock
) -> None:
    inner = MemoryStore(10, clock=clock)
    store = TracedStore(inner)
    await inner.create(rec("a", clock))
    local = store.local
    assert isinstance(local, TracedRecords)

    got = tracing.call_under(PARENT, local.get_now, "a")
    assert got == inner.get_now("a")
    s = only(spans)
    assert s.name == "store.get" and s.status.status_code is StatusCode.UNSET

    idem = ("k", IdempotencyRecord("fp", {"version": 1}, clock() + 60))
    new = tracing.call_under(PARENT, local.commit_now, got.replace(version=1), 0, idem)
    assert new.version == 1 and inner.get_now("a").version == 1
    s = only(spans)
    assert s.name == "store.commit" and s.attributes is not None
    assert s.attributes["rnnserve.version"] == 1
    assert s.start_time is not None and s.end_time is not None and s.start_time <= s.end_time

    assert tracing.call_under(PARENT, local.get_idempotent_now, "a", "k") == idem[1]
    assert only(spans).name == "store.get_idempotent"


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda local, clock: local.get_now("never"), SessionNotFound),
        (lambda local, clock: local.commit_now(rec("a", clock, version=5), 3), VersionConflict),
    ],
    ids=["get of an unknown session", "commit at a stale version"],
)
async def test_a_failed_call_raises_the_stores_error_and_its_span_says_so(
    spans: InMemorySpanExporter, clock: FakeClock, call: object, error: type[Exception]
) -> None:
    inner = MemoryStore(10, clock=clock)
    await inner.create(rec("a", clock))
    local = TracedStore(inner).local
    assert local is not None
    with pytest.raises(error):
        tracing.call_under(PARENT, call, local, clock)  # type: ignore[arg-type]
    s = only(spans)
    assert s.status.status_code is StatusCode.ERROR and s.status.description == error.__name__
    assert inner.get_now("a").version == 0  # (the failed commit changed nothing)


async def test_without_a_sampled_request_no_span_is_made(
    spans: InMemorySpanExporter, clock: FakeClock
) -> None:
    inner = MemoryStore(10, clock=clock)
    await inner.create(rec("a", clock))
    store = TracedStore(inner)
    assert store.local is not None
    assert tracing.capture() is None
    store.local.commit_now(store.local.get_now("a").replace(version=1), 0)
    await store.get("a")
    assert spans.get_finished_spans() == ()


async def test_a_store_without_plain_calls_has_none_traced(clock: FakeClock) -> None:
    class Remote(MemoryStore):  # (as Redis: records over the network only)
        @property
        def local(self) -> None:  # type: ignore[override]
            return None

    assert TracedStore(Remote(10, clock=clock)).local is None
