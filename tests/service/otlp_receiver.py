"""A real OTLP/gRPC trace receiver (a collector's front door) for the tests: it keeps every
export request it is sent."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Every request exported to it, and `cv` notified at each."""

    def __init__(self) -> None:
        self.cv = threading.Condition()
        self.requests: list[ExportTraceServiceRequest] = []

    def Export(self, request: Any, context: Any) -> Any:
        with self.cv:
            self.requests.append(request)
            self.cv.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[tuple[int, str, str, str]]:
        """(process.pid, rnnserve.role, trace id in hex, span name) of every span received
        (hold `cv`)."""
        out = []
        for request in self.requests:
            for rs in request.resource_spans:
                attrs = {kv.key: kv.value for kv in rs.resource.attributes}
                pid, role = attrs["process.pid"].int_value, attrs["rnnserve.role"].string_value
                for scope in rs.scope_spans:
                    out += [(pid, role, s.trace_id.hex(), s.name) for s in scope.spans]
        return out


@contextlib.contextmanager
def running() -> Iterator[tuple[Receiver, int]]:
    """A receiver listening on a free loopback port, and the port."""
    r = Receiver()
    server = grpc.server(ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(r, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield r, port
    finally:
        server.stop(None)
