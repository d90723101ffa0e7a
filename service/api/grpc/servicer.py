"""`GRPCInferenceService`: the Open Inference Protocol v2 over gRPC, mapped onto what HTTP's
`/v2` serves (the same models, rules, limits and error messages; `calls.py` is the middleware).

`ModelStreamInfer` runs a stream's requests as they arrive, in order within a sequence (a
step waits for the one sent before it on the same `sequence_id`) and concurrently otherwise,
at most `max_streams_per_key` at once per stream (past that the stream is not read until one
finishes: a client cannot pile up work). A failed request answers an `error_message` on the
stream, as Triton does, and the stream goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Any

import grpc

from service import tracing
from service.api.deps import Services
from service.api.grpc import calls as c
from service.api.grpc import infer, tensors
from service.api.grpc import inference_pb2 as pb
from service.api.grpc.inference_pb2_grpc import GRPCInferenceServiceServicer
from service.api.middleware.limits import RequestTimeout
from service.api.repository import require_admin
from service.api.v2 import protocol, serving
from service.api.v2.repository import load_op, unload_op
from service.errors import InvalidInput, ModelNotFound, ServiceError
from service.keys import Keys
from service.protocol.events import ClientTooSlow
from service.protocol.ops import RepositoryIndex

_DATA_TYPES = {"BYTES": "TYPE_STRING"}  # v2 datatype -> Triton's config enum (else TYPE_<dt>)


class InferenceServicer(GRPCInferenceServiceServicer):
    def __init__(self, services: Services, keys: Keys) -> None:
        self.calls = c.Calls(services, keys)
        self.s = services

    # -- health and metadata ------------------------------------------------------------------

    @c.unary("ServerLive", open_call=True)
    async def ServerLive(self, request: Any, context: Any, owner: str | None) -> Any:
        return pb.ServerLiveResponse(live=self.s.client.alive)

    @c.unary("ServerReady", open_call=True)
    async def ServerReady(self, request: Any, context: Any, owner: str | None) -> Any:
        return pb.ServerReadyResponse(ready=await serving.server_not_ready(self.s) is None)

    @c.unary("ModelReady")
    async def ModelReady(self, request: Any, context: Any, owner: str | None) -> Any:
        try:
            m = serving.model_of(self.s, request.name, request.version or None)
        except ModelNotFound:  # as tritonclient reads HTTP's 404: not ready
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=await serving.not_ready(self.s, m) is None)

    @c.unary("ServerMetadata")
    async def ServerMetadata(self, request: Any, context: Any, owner: str | None) -> Any:
        meta = protocol.server_metadata()
        return pb.ServerMetadataResponse(
            name=meta.name, version=meta.version, extensions=meta.extensions
        )

    @c.unary("ModelMetadata")
    async def ModelMetadata(self, request: Any, context: Any, owner: str | None) -> Any:
        m = serving.model_of(self.s, request.name, request.version or None)
        meta = protocol.metadata_of(m, self.s.client.catalog)
        out = pb.ModelMetadataResponse(
            name=meta.name, versions=meta.versions, platform=meta.platform
        )
        for t in meta.inputs:
            out.inputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        for t in meta.outputs:
            out.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        return out

    @c.unary("ModelConfig")
    async def ModelConfig(self, request: Any, context: Any, owner: str | None) -> Any:
        m = serving.model_of(self.s, request.name, request.version or None)
        cfg = protocol.config_of(m)
        batch = int(cfg["max_batch_size"] or 0)
        out = pb.ModelConfig(
            name=cfg["name"],
            platform=cfg["platform"],
            backend=cfg["backend"],
            max_batch_size=batch,
        )
        policy = cfg["version_policy"]
        if "latest" in policy:
            out.version_policy.latest.num_versions = policy["latest"].get("num_versions", 1)
        elif "all" in policy:
            out.version_policy.all.SetInParent()
        elif "specific" in policy:
            # Triton's versions are numbers; a folder named otherwise is left out here (the
            # settings, in `parameters`, still name it)
            out.version_policy.specific.versions.extend(
                int(v) for v in policy["specific"]["versions"] if str(v).isdecimal()
            )
        out.dynamic_batching.max_queue_delay_microseconds = cfg["dynamic_batching"][
            "max_queue_delay_microseconds"
        ]
        if cfg["sequence_batching"] is not None:
            out.sequence_batching.SetInParent()
        for key, value in cfg["parameters"].items():
            out.parameters[key].string_value = value["string_value"]
        # with batching on, Triton's dims leave out the batch dimension
        for specs, add in (
            (protocol.input_specs(m), out.input.add),
            (protocol.output_specs(m), out.output.add),
        ):
            for t in specs:
                add(
                    name=t.name,
                    data_type=_DATA_TYPES.get(t.datatype, f"TYPE_{t.datatype}"),
                    dims=t.shape[1:] or [1] if batch else t.shape,
                )
        return pb.ModelConfigResponse(config=out)

    # -- the model repository -----------------------------------------------------------------

    @c.unary("RepositoryIndex")
    async def RepositoryIndex(self, request: Any, context: Any, owner: str | None) -> Any:
        await require_admin(owner, self.s)
        found = await self.s.client.call(RepositoryIndex(request.ready))
        out = pb.RepositoryIndexResponse()
        for e in found:
            out.models.add(name=e.name, version=e.version, state=e.state, reason=e.reason)
        return out

    @c.unary("RepositoryModelLoad")
    async def RepositoryModelLoad(self, request: Any, context: Any, owner: str | None) -> Any:
        await require_admin(owner, self.s)
        await self.s.client.call(load_op(request.model_name, _repo_params(request.parameters)))
        return pb.RepositoryModelLoadResponse()

    @c.unary("RepositoryModelUnload")
    async def RepositoryModelUnload(self, request: Any, context: Any, owner: str | None) -> Any:
        await require_admin(owner, self.s)
        await self.s.client.call(unload_op(request.model_name, _repo_params(request.parameters)))
        return pb.RepositoryModelUnloadResponse()

    # -- inference ----------------------------------------------------------------------------

    @c.unary("ModelInfer")
    async def ModelInfer(self, request: Any, context: Any, owner: str | None) -> Any:
        if infer.is_generation(request):
            return await infer.generate(self.s, request, owner)
        return await infer.infer(self.s, request, owner)

    async def ModelStreamInfer(
        self, requests: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> None:
        async with self.calls.serving("ModelStreamInfer", context) as call:
            await _Stream(self, context, call.owner).run(requests)


def _repo_params(params: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in params.items():
        kind = v.WhichOneof("parameter_choice")
        if kind is None:
            raise InvalidInput("has no value", field=f"parameters.{k}")
        out[k] = getattr(v, kind)
    return out


class _Stalled(Exception):
    """The client did not take an answer within `send_timeout_s`."""


class _Stream:
    """One `ModelStreamInfer` call: its requests run as tasks, its responses written one at a
    time (gRPC allows one write in flight), each within `send_timeout_s` as HTTP's sends are: a
    client that stops reading ends its stream (UNAVAILABLE `client_too_slow`), which cancels its
    requests and frees their stream slots and session locks."""

    def __init__(
        self, owner_of: InferenceServicer, context: grpc.aio.ServicerContext, owner: str | None
    ) -> None:
        self.s = owner_of.s
        self.context = context
        self.owner = owner
        self.write_lock = asyncio.Lock()
        self.slots = asyncio.Semaphore(self.s.settings.max_streams_per_key)
        self.last: dict[str, asyncio.Task[None]] = {}  # a sequence's latest step, by its id
        self.tasks: set[asyncio.Task[None]] = set()
        self.stalled = False
        self.reader: asyncio.Task[Any] | None = None

    async def run(self, requests: AsyncIterator[pb.ModelInferRequest]) -> None:
        self.reader = reader = asyncio.current_task()
        assert reader is not None
        cancelling = reader.cancelling()
        try:
            async for msg in requests:
                await self.slots.acquire()  # a full stream is not read until a request ends
                key = _sequence_key(msg)
                before = self.last.get(key) if key is not None else None
                task = asyncio.create_task(self._one(msg, before))
                self.tasks.add(task)
                task.add_done_callback(self._done)
                if key is not None:
                    self.last[key] = task
                    task.add_done_callback(functools.partial(self._forget, key))
            if self.tasks:
                await asyncio.gather(*self.tasks)
        except asyncio.CancelledError:
            if self.stalled and reader.uncancel() <= cancelling:  # ours, not the client's
                raise ClientTooSlow(
                    "the client did not read the stream's answers within "
                    f"{self.s.settings.send_timeout_s:g} s (RNNSERVE_SEND_TIMEOUT_S)"
                ) from None
            raise
        finally:
            for task in self.tasks:
                task.cancel()
            if self.tasks:
                await asyncio.gather(*self.tasks, return_exceptions=True)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if task.cancelled() or self.stalled:
            return
        if isinstance(task.exception(), _Stalled) and self.reader is not None:
            self.stalled = True
            self.reader.cancel()

    def _forget(self, key: str, task: asyncio.Task[None]) -> None:
        if self.last.get(key) is task:
            del self.last[key]

    async def _one(self, msg: pb.ModelInferRequest, before: asyncio.Task[None] | None) -> None:
        if not tracing.enabled:
            await self._serve(msg, before)
            return
        with tracing.linked_span(
            "gRPC ModelStreamInfer request", {"rnnserve.request_id": getattr(msg, "id", "")}
        ):
            await self._serve(msg, before)

    async def _serve(self, msg: pb.ModelInferRequest, before: asyncio.Task[None] | None) -> None:
        try:
            if before is not None:  # the sequence's previous step first, whatever its outcome
                await asyncio.wait([before])
            if isinstance(msg, c.Malformed):
                raise msg.error()
            if infer.is_generation(msg):
                gen = infer.stream_generation(self.s, msg, self.owner)
                async with contextlib.aclosing(gen):  # its slot is freed here, not by the GC
                    async for resp in gen:
                        await self._write(pb.ModelStreamInferResponse(infer_response=resp))
            else:
                async with asyncio.timeout(self.s.settings.request_timeout_s):
                    resp = await infer.infer(self.s, msg, self.owner)
                await self._write(pb.ModelStreamInferResponse(infer_response=resp))
        except _Stalled:
            raise
        except ServiceError as e:
            await self._error(msg, c.message_of(e))
        except TimeoutError:
            await self._error(
                msg, c.message_of(RequestTimeout.after(self.s.settings.request_timeout_s))
            )
        except Exception:
            # as a unary call's INTERNAL: logged, its details stay in the log; the stream goes on
            c.log.exception("unexpected error", extra={"route": "ModelStreamInfer"})
            await self._error(msg, "internal error")
        finally:
            self.slots.release()

    async def _error(self, msg: pb.ModelInferRequest, message: str) -> None:
        resp = (
            pb.ModelInferResponse()
            if isinstance(msg, c.Malformed)
            else pb.ModelInferResponse(
                model_name=msg.model_name, model_version=msg.model_version, id=msg.id
            )
        )
        await self._write(pb.ModelStreamInferResponse(error_message=message, infer_response=resp))

    async def _write(self, resp: pb.ModelStreamInferResponse) -> None:
        async with self.write_lock:
            if self.stalled:
                raise _Stalled
            # the write itself is never cancelled: grpcio cannot take back a message it is
            # sending, and a call whose write was cancelled never sends its status
            write = asyncio.ensure_future(self.context.write(resp))
            done, _ = await asyncio.wait((write,), timeout=self.s.settings.send_timeout_s)
            if not done:
                write.add_done_callback(_retrieve)
                raise _Stalled
            write.result()


def _retrieve(write: asyncio.Future[None]) -> None:
    if not write.cancelled():
        write.exception()  # (a stalled client's last write: its outcome no longer matters)


def _sequence_key(msg: pb.ModelInferRequest) -> str | None:
    """The sequence id of a sequence step, for ordering (the session it names, whatever model
    a request says; a malformed id: None, its step fails on its own)."""
    if isinstance(msg, c.Malformed):
        return None
    p = msg.parameters.get("sequence_id")
    if p is None:
        return None
    try:
        sid = tensors.parameter(p, "sequence_id")
    except ServiceError:
        return None
    return None if sid in (0, "") else str(sid)
