"""The gRPC endpoint's server: grpcio's asyncio server on `RNNSERVE_GRPC_PORT`, in the API
process's event loop beside uvicorn, for as long as the app runs (`api/app.py`'s lifespan).

At `--workers N` every API worker binds the port with SO_REUSEPORT, so the kernel spreads new
connections over them as the supervisor's shared socket does for HTTP (a gRPC connection is
long-lived: a client's calls all go to the worker that accepted it). In one process the port
is bound without it, so a port already taken fails the start loudly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc

from service.api.deps import Services
from service.api.grpc import inference_pb2 as pb
from service.api.grpc.calls import SERVICE, reader
from service.api.grpc.servicer import InferenceServicer
from service.keys import Keys
from service.logging import get_logger

log = get_logger("grpc")


def handlers(servicer: InferenceServicer) -> grpc.GenericRpcHandler:
    """Every method of the service (from the compiled descriptor), each reading its request
    with `calls.reader`: a message that does not parse is the client's mistake."""
    methods = {}
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        read = reader(getattr(pb, method.input_type.name))
        write = getattr(pb, method.output_type.name).SerializeToString
        fn = getattr(servicer, method.name)
        if method.client_streaming:
            methods[method.name] = grpc.stream_stream_rpc_method_handler(fn, read, write)
        else:
            methods[method.name] = grpc.unary_unary_rpc_method_handler(fn, read, write)
    return grpc.method_handlers_generic_handler(SERVICE, methods)


class GrpcEndpoint:
    """A started server: its port, and its drain, begun once (as the HTTP drain begins, so
    both share `shutdown_timeout_s`) and awaited as the app stops."""

    def __init__(self, server: grpc.aio.Server, port: int, grace_s: float) -> None:
        self.server, self.port, self.grace_s = server, port, grace_s
        self._stopping: asyncio.Future[None] | None = None

    def drain(self) -> None:
        """Stop taking calls; those in flight get `grace_s` to finish (then they are
        cancelled: a session step commits nothing)."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self.server.stop(self.grace_s))

    async def close(self) -> None:
        self.drain()
        assert self._stopping is not None
        await self._stopping


@asynccontextmanager
async def grpc_server(services: Services, keys: Keys) -> AsyncIterator[GrpcEndpoint]:
    """Serve until the block ends (draining first, if `drain()` was not called already)."""
    s = services.settings
    assert s.grpc_port is not None
    server = grpc.aio.server(
        options=[
            # the same bound as an HTTP body: a larger message is refused (RESOURCE_EXHAUSTED)
            # before it is parsed
            ("grpc.max_receive_message_length", s.max_body_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 1 if s.workers > 0 else 0),
        ]
    )
    server.add_generic_rpc_handlers((handlers(InferenceServicer(services, keys)),))
    host = f"[{s.host}]" if ":" in s.host else s.host
    port = server.add_insecure_port(f"{host}:{s.grpc_port}")
    if port == 0:  # grpcio says so by returning 0 (older) or raising (newer)
        raise RuntimeError(f"cannot bind the gRPC port {host}:{s.grpc_port}")
    await server.start()
    if s.workers == 0:  # at --workers N the supervisor's line names the port once
        log.info("grpc listening on %s:%d", host, port, extra={"grpc_port": port})
    endpoint = GrpcEndpoint(server, port, s.shutdown_timeout_s)
    try:
        yield endpoint
    finally:
        await endpoint.close()
