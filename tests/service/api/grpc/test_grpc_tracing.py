"""A gRPC call's trace: the caller's `traceparent` (metadata) honoured, the call's SERVER span
the parent of the engine's spans, a linked trace per request of a stream, and the trace id and the
key's name in the access log line (service/tracing.py's fixtures at its seam)."""

from __future__ import annotations

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, format_span_id

from service.api.grpc import calls
from service.api.grpc import inference_pb2 as pb
from tests.hardening.conftest import KEY_A, KEYS
from tests.service.api.grpc.test_calls import text_request
from tests.service.conftest import LM, ClientFactory, app_of
from tests.service.test_tracing import (
    CALLER,
    TRACE,
    TRACEPARENT,
    Records,
    _is_parent,
    _of_trace,
    _one,
    access_log,
)

__all__ = ["access_log"]  # the fixture, used by name (`spans` is tests/service/conftest.py's)


@pytest.mark.parametrize("transport", ["inprocess", "zmq"])
async def test_a_sequence_step_over_grpc_is_one_trace(
    make_client: ClientFactory, spans: InMemorySpanExporter, access_log: Records, transport: str
) -> None:
    meta = (("authorization", f"Bearer {KEY_A}"), ("traceparent", TRACEPARENT))
    step = text_request(LM, ["Hello"])
    step.parameters["sequence_id"].string_param = "traced"
    step.parameters["sequence_start"].bool_param = True
    async with make_client(engine_transport=transport, api_keys=KEYS, grpc_port=0) as c:
        port = app_of(c).state.grpc_port
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            infer = ch.unary_unary(
                f"/{calls.SERVICE}/ModelInfer",
                request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=pb.ModelInferResponse.FromString,
            )
            await infer(step, metadata=meta)
            stream = ch.stream_stream(
                f"/{calls.SERVICE}/ModelStreamInfer",
                request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=pb.ModelStreamInferResponse.FromString,
            )
            del step.parameters["sequence_start"]
            answers = [r async for r in stream(iter([step, step]), metadata=meta)]
            assert [a.error_message for a in answers] == ["", ""]
    got = _of_trace(spans)
    call = _one(got, "gRPC ModelInfer", SpanKind.SERVER)
    assert call.parent is not None and format_span_id(call.parent.span_id) == CALLER
    assert call.attributes is not None and call.attributes["rpc.system"] == "grpc"
    engine = call  # in one process the engine's spans are the call's children
    if transport == "zmq":  # over the wire: call -> wire client -> engine server
        (client,) = [s for s in got if s.name == "wire SequenceStep" and _is_parent(call, s)]
        (engine,) = [s for s in got if s.name == "engine SequenceStep" and _is_parent(client, s)]
    assert any(_is_parent(engine, s) and s.name == "prefill batch" for s in got)
    streamed = _one(got, "gRPC ModelStreamInfer", SpanKind.SERVER)
    # each request on the stream is a trace of its own (sampled and bounded on its own),
    # linked to the stream's span; the engine's spans for it are under it
    every = spans.get_finished_spans()
    per_request = [s for s in every if s.name == "gRPC ModelStreamInfer request"]
    assert len(per_request) == 2
    for s in per_request:
        assert s.parent is None and s.context.trace_id != streamed.context.trace_id
        assert [link.context.span_id for link in s.links] == [streamed.context.span_id]
        assert any(x.context.trace_id == s.context.trace_id for x in every if x is not s)
    line = access_log.access("/ModelInfer")
    assert line["trace_id"] == TRACE and line["key_name"] == "alice"
    assert line["status"] == "OK" and line["method"] == "GRPC"
