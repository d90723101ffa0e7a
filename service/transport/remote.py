"""An API worker's side of the wire: `RemoteClient`, the `EngineClient` of an engine in another
process (`host.EngineHost`), over one ZeroMQ DEALER socket.

Its socket is read and written by a `Channel` (`channel.py`), as the engine's: every answer is
routed by request id to its call (a future for a unary call, a buffer for a stream:
`remote_streams.py`) from the loop's reader callback, and the frames the worker's tasks send in
one loop iteration leave as one message. A call whose caller is cancelled (its HTTP client
left, a timeout) sends `Cancel`, so the engine stops the work and commits nothing. A stream's
tokens wait in the worker for its HTTP client (the engine forwards them as they are made); that
backlog is bounded by `stream_buffer_bytes`, as in one process: past it the stream is cancelled
and ends with `client_too_slow`.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from typing import Any, TypeVar

import msgspec
import zmq

from service import tracing
from service.contract import ModelManifest, tokenizer_from_spec
from service.errors import EngineError, InvalidInput, ServiceError
from service.protocol.catalog import Catalog, ModelView, require_unicode
from service.protocol.client import StreamHold
from service.protocol.messages import PROTOCOL_VERSION, GenerationResult
from service.protocol.ops import Op, StreamOp
from service.transport import wire
from service.transport.channel import Channel
from service.transport.remote_streams import RemoteGeneration, RemoteHold

R = TypeVar("R")

_ATTRS = {"rpc.system": "rnnserve.wire"}


class EngineGone(EngineError):
    """The engine process stopped answering (it died; the supervisor ends the server)."""

    status, code = 503, "engine_unavailable"


class RemoteClient:
    """`EngineClient` over ZeroMQ. `await connect()` once (it fetches the catalog)."""

    def __init__(self, address: str, stream_buffer_bytes: int = 2**62) -> None:
        self.address = address
        self.stream_buffer_bytes = stream_buffer_bytes
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sock: zmq.Socket[bytes] = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)  # never drop or block a call (host.py says why)
        sock.setsockopt(zmq.RCVHWM, 0)
        # the engine knows a worker by this id (the supervisor names a dead worker by its pid)
        sock.setsockopt(zmq.IDENTITY, worker_identity(os.getpid()))
        sock.connect(address)
        self._channel = Channel(sock, self._read)
        self._ids = itertools.count(1)
        self._calls: dict[int, asyncio.Future[msgspec.Raw]] = {}
        self._streams: dict[int, RemoteGeneration] = {}
        self._gone: EngineGone | None = None  # set once the engine process is known dead
        self.catalog = Catalog()
        self._generation = 0  # of the catalog held (the engine numbers each one it sends)

    async def connect(self, timeout_s: float = 300.0) -> None:
        self._channel.start()
        rid = next(self._ids)
        hello: asyncio.Future[msgspec.Raw] = asyncio.get_running_loop().create_future()
        self._calls[rid] = hello
        # alone in its message: an engine of another wire version must read it, and answer
        self._channel.send_alone(wire.Call(rid, wire.Hello(wire.WIRE_VERSION)))
        try:
            raw = await asyncio.wait_for(hello, timeout_s)
        finally:
            self._calls.pop(rid, None)
        try:
            info = wire.decode_result(wire.CatalogInfo, raw)
        except msgspec.DecodeError:  # (a validation error too)
            info = None
        if info is None or info.wire_version != wire.WIRE_VERSION:
            theirs = "an unknown" if info is None else str(info.wire_version)
            raise RuntimeError(
                f"the engine speaks wire version {theirs}, this worker {wire.WIRE_VERSION}: "
                "run the same version of both"
            )
        if info.protocol_version != PROTOCOL_VERSION:
            raise RuntimeError(
                f"engine protocol {info.protocol_version}, this worker {PROTOCOL_VERSION}"
            )
        self._catalog_from(info)

    def _catalog_from(self, info: wire.CatalogInfo) -> None:
        """The engine's catalog, unless a newer one came first (`generation`)."""
        if info.generation < self._generation:
            return
        self._generation = info.generation
        defaults: dict[str, ModelView] = {}
        versions: dict[str, ModelView] = {}
        for e in info.models:
            manifest = ModelManifest.model_validate(e.manifest)
            tok = tokenizer_from_spec(manifest.tokenizer)
            view = ModelView(
                manifest, tok, e.sha256, e.variant, e.provider, e.created, e.settings, e.draining
            )
            versions[view.key] = view
            if e.default:
                defaults[view.name] = view
        self.catalog = Catalog(defaults, dict(info.failed), versions)

    async def close(self) -> None:
        self._channel.stop()
        self._fail_all(EngineGone("the worker is shutting down"))
        self._channel.sock.close(linger=0)
        self._ctx.term()

    @property
    def alive(self) -> bool:
        return self._gone is None

    def engine_gone(self) -> None:
        """The engine process died (the supervisor says so with SIGUSR1): every call waiting
        on it and every call from now on fails at once with 503 `engine_unavailable`, and
        every open stream ends with that error, instead of waiting for answers that cannot
        come while the server shuts down."""
        if self._gone is None:
            self._gone = EngineGone("the engine process died; the server is restarting")
        self._fail_all(self._gone)

    # -- plumbing
    def _read(self, _peer: bytes | None, raw: bytes) -> None:
        # one message holds every frame the engine had ready for this worker (host.py)
        for frame in wire.frames_decoder.decode(raw):
            self._dispatch(frame)

    def _dispatch(self, frame: wire.Frame) -> None:
        if type(frame) is wire.StepIds:  # most frames by far: one per engine step
            streams = self._streams
            ends = frame.ending() if frame.ends else None
            for rid, token_id in zip(*frame.arrays(), strict=True):
                gen = streams.get(rid)
                if gen is not None:
                    gen._id(token_id, ends is not None and rid in ends)
        elif type(frame) is wire.CatalogInfo:  # the models served changed
            self._catalog_from(frame)
        elif type(frame) is wire.Tokens:  # tokens with logprobs
            gen = self._streams.get(frame.rid)
            if gen is not None:
                gen._tokens(frame.tokens)
        elif isinstance(frame, wire.Opened):
            gen = self._streams.get(frame.rid)
            if gen is not None and not gen.opened.done():
                if frame.model is not None:  # its tokens come as ids, for this worker to decode
                    gen.decode_with(self.catalog.decoder(frame.model).vocab)
                gen.opened.set_result(None)
        elif isinstance(frame, wire.Finishing):
            gen = self._streams.get(frame.rid)
            if gen is not None:
                gen._finishing()
        elif isinstance(frame, wire.Result | wire.Failed):
            value: Any = (
                frame.value if isinstance(frame, wire.Result) else wire.raise_error(frame.error)
            )
            gen = self._streams.get(frame.rid)
            if gen is not None:  # a stream's end: its result, decoded here
                if isinstance(value, msgspec.Raw):
                    value = wire.decode_result(GenerationResult, value)
                gen._end(value)
                return
            # a call's answer stays encoded: its caller knows the type to decode it as
            fut = self._calls.pop(frame.rid, None)
            if fut is not None and not fut.done():
                if isinstance(value, BaseException):
                    fut.set_exception(value)
                else:
                    fut.set_result(value)

    def _fail_all(self, e: ServiceError) -> None:
        for fut in self._calls.values():
            if not fut.done():
                fut.set_exception(e)
        self._calls.clear()
        for gen in list(self._streams.values()):
            gen._end(e)

    def _cancel(self, rid: int) -> None:
        self._channel.post(None, wire.Cancel(rid))

    def _drained(self, rid: int, text: str | None) -> None:
        self._channel.post(None, wire.Drained(rid, text))

    @staticmethod
    def _encode(frame: wire.Call) -> msgspec.Raw:
        """A call, encoded as it is made: one that cannot cross the wire fails alone, with the
        error the in-process engine gives (not the message it would have shared)."""
        try:
            return msgspec.Raw(wire.encoder.encode(frame))
        except UnicodeEncodeError:
            raise _not_text(frame.op) from None
        except OverflowError:  # the schemas bound every integer; this guards the wire itself
            raise InvalidInput("a number in the request is out of range") from None

    async def _unary(self, op: wire.Operation, rid: int | None = None) -> msgspec.Raw:
        if self._gone is not None:
            raise self._gone
        if tracing.enabled and tracing.capture() is not None:  # (a sampled request's call)
            return await self._traced(op, rid)
        rid = next(self._ids) if rid is None else rid
        fut: asyncio.Future[msgspec.Raw] = asyncio.get_running_loop().create_future()
        self._calls[rid] = fut
        try:
            self._channel.post(None, self._encode(wire.Call(rid, op)))
            return await fut
        except asyncio.CancelledError:
            if self._calls.pop(rid, None) is not None:
                self._cancel(rid)  # the caller left: the engine stops and commits nothing
            raise

    async def _traced(self, op: wire.Operation, rid: int | None) -> msgspec.Raw:
        """`_unary` in a CLIENT span, whose context the `Call` carries to the engine."""
        span, carrier = tracing.client_span(f"wire {type(op).__name__}", _ATTRS)
        rid = next(self._ids) if rid is None else rid
        fut: asyncio.Future[msgspec.Raw] = asyncio.get_running_loop().create_future()
        self._calls[rid] = fut
        error: BaseException | None = None
        try:
            self._channel.post(None, self._encode(wire.Call(rid, op, trace=carrier)))
            return await fut
        except asyncio.CancelledError as e:
            error = e
            if self._calls.pop(rid, None) is not None:
                self._cancel(rid)
            raise
        except Exception as e:
            error = e
            raise
        finally:
            tracing.end_span(span, error)

    # -- EngineClient
    async def call(self, op: Op[R]) -> R:
        out: R = wire.decode_result(op.result_type(), await self._unary(op))
        return out

    async def open(self, op: StreamOp, hold: StreamHold | None = None) -> RemoteGeneration:
        if self._gone is not None:
            raise self._gone
        rid = next(self._ids)
        # the request's stream slot travels with its generation: the engine takes it as it
        # reads the frame (`wire.SlotRef`)
        slot = hold.ref_for(self) if isinstance(hold, RemoteHold) else None
        span, carrier = None, None
        if tracing.enabled and tracing.capture() is not None:
            # a CLIENT span for the whole stream, ended as the generation closes
            span, carrier = tracing.client_span(f"wire {type(op).__name__}", _ATTRS)
        try:
            frame = self._encode(wire.Call(rid, op, slot, carrier))
        except BaseException as e:
            if span is not None:
                tracing.end_span(span, e)
            raise
        gen = RemoteGeneration(self, rid, self.stream_buffer_bytes, op.stops())
        gen.span = span
        self._streams[rid] = gen
        try:
            self._channel.post(None, frame)
            await gen.opened  # the engine's own errors at start (unknown session, bad prompt)
        except asyncio.CancelledError:
            await gen.aclose()
            raise
        except BaseException as e:  # refused as it started: no `aclose` comes
            if span is not None:
                gen.span = None
                tracing.end_span(span, e)
            raise
        return gen

    def hold_stream(self, owner: str | None, rows: int = 1) -> RemoteHold:
        return RemoteHold(self, next(self._ids), owner, rows)


def _not_text(op: wire.Operation) -> ServiceError:
    """The error a string that cannot cross the wire (a lone surrogate) gets: the one the
    in-process engine gives (`catalog.require_unicode`), naming the same field."""
    texts = op.texts() if isinstance(op, Op | StreamOp) else ()
    for field, text in texts:
        try:
            require_unicode(text, field)
        except ServiceError as e:
            return e
    return InvalidInput("the request holds a string that is not valid Unicode text")


def worker_identity(pid: int) -> bytes:
    return f"w{pid}".encode()
