"""A collector stand-in for benchmarks: an OTLP/gRPC trace receiver that takes every export,
counts the spans and drops them, so a traced server's export is real (serialised, sent, acked)
without a collector's own cost on the machine being measured beyond this process's.

    python -m bench.otlp_sink --port 4317     # until SIGTERM / Ctrl-C: then "spans N"
"""

from __future__ import annotations

import argparse
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Sink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans = 0
        self._lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:
        n = sum(len(s.spans) for rs in request.resource_spans for s in rs.scope_spans)
        with self._lock:
            self.spans += n
        return trace_service_pb2.ExportTraceServiceResponse()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--port", type=int, default=4317)
    a = p.parse_args()
    sink = Sink()
    server = grpc.server(ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    server.add_insecure_port(f"127.0.0.1:{a.port}")
    server.start()
    print(f"listening 127.0.0.1:{a.port}", flush=True)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    server.stop(1)
    print(f"spans {sink.spans}", flush=True)


if __name__ == "__main__":
    main()
