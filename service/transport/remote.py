"""An API worker's side of the wire: `RemoteClient`, the `EngineClient` of an engine in another
process (`host.EngineHost`), over one ZeroMQ DEALER socket.

A reader task routes every answer to its call by request id: a future for a unary call, a
buffer for a stream (`remote_streams.py`). A call whose caller is cancelled (its HTTP client
left, a timeout) sends `Cancel`, so the engine stops the work and commits nothing. A stream's
tokens wait in the worker for its HTTP client (the engine forwards them as they are made); that
backlog is bounded by `stream_buffer_bytes`, as in one process: past it the stream is cancelled
and ends with `client_too_slow`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from typing import Any

import numpy as np
import zmq
import zmq.asyncio

from service.contract import ModelManifest, tokenizer_from_spec
from service.errors import EngineError, InvalidInput, ServiceError
from service.protocol.catalog import Catalog, ModelView, require_unicode
from service.protocol.client import STREAM_HOLD
from service.protocol.messages import (
    PROTOCOL_VERSION,
    FeedResult,
    GenerateParams,
    Output,
    SequenceRef,
    SessionInfo,
    StateExport,
)
from service.transport import wire
from service.transport.remote_streams import RemoteGeneration, RemoteHold

HEALTH_TIMEOUT_S = 2.0  # a readiness probe's wait for the engine process


class EngineGone(EngineError):
    """The engine process stopped answering (it died; the supervisor ends the server)."""

    status, code = 503, "engine_unavailable"


class RemoteClient:
    """`EngineClient` over ZeroMQ. `await connect()` once (it fetches the catalog)."""

    def __init__(self, address: str, stream_buffer_bytes: int = 2**62) -> None:
        self.address = address
        self.stream_buffer_bytes = stream_buffer_bytes
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, 0)  # never drop or block a call (host.py says why)
        self._sock.setsockopt(zmq.RCVHWM, 0)
        # the engine knows a worker by this id (the supervisor names a dead worker by its pid)
        self._sock.setsockopt(zmq.IDENTITY, worker_identity(os.getpid()))
        self._sock.connect(address)
        self._ids = itertools.count(1)
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._streams: dict[int, RemoteGeneration] = {}
        self._reader: asyncio.Task[None] | None = None
        self._gone: EngineGone | None = None  # set once the engine process is known dead
        self.catalog = Catalog()

    async def connect(self, timeout_s: float = 300.0) -> None:
        self._reader = asyncio.create_task(self._read())
        info = await asyncio.wait_for(self._unary(wire.Hello(wire.WIRE_VERSION)), timeout_s)
        if not isinstance(info, wire.CatalogInfo) or info.wire_version != wire.WIRE_VERSION:
            raise RuntimeError(f"engine speaks another wire version: {info!r}")
        if info.protocol_version != PROTOCOL_VERSION:
            raise RuntimeError(
                f"engine protocol {info.protocol_version}, this worker {PROTOCOL_VERSION}"
            )
        models = {}
        for e in info.models:
            manifest = ModelManifest.model_validate(e.manifest)
            tok = tokenizer_from_spec(manifest.tokenizer)
            models[manifest.name] = ModelView(
                manifest, tok, e.sha256, e.variant, e.provider, e.created
            )
        self.catalog = Catalog(models, dict(info.failed))

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._fail_all(EngineGone("the worker is shutting down"))
        self._sock.close(linger=0)
        self._ctx.term()

    def engine_gone(self) -> None:
        """The engine process died (the supervisor says so with SIGUSR1): every call waiting
        on it and every call from now on fails at once with 503 `engine_unavailable`, and
        every open stream ends with that error, instead of waiting for answers that cannot
        come while the server shuts down."""
        if self._gone is None:
            self._gone = EngineGone("the engine process died; the server is restarting")
        self._fail_all(self._gone)

    # -- plumbing
    async def _read(self) -> None:
        while True:
            # one message holds every frame the engine had ready for this worker (host.py)
            for frame in wire.frames_decoder.decode(await self._sock.recv()):
                self._dispatch(frame)

    def _dispatch(self, frame: wire.Frame) -> None:
        if type(frame) is wire.Tokens:  # most frames by far: one per stream per engine step
            gen = self._streams.get(frame.rid)
            if gen is not None:
                gen._tokens(frame.tokens)
        elif isinstance(frame, wire.Opened):
            gen = self._streams.get(frame.rid)
            if gen is not None and not gen.opened.done():
                gen.opened.set_result(None)
        elif isinstance(frame, wire.Finishing):
            gen = self._streams.get(frame.rid)
            if gen is not None:
                gen._finishing()
        elif isinstance(frame, wire.Result | wire.Failed):
            value: Any = (
                frame.value if isinstance(frame, wire.Result) else wire.raise_error(frame.error)
            )
            if isinstance(value, wire.Generated):
                value = value.result
            gen = self._streams.get(frame.rid)
            if gen is not None:
                gen._end(value)
                return
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
        with contextlib.suppress(zmq.ZMQError):
            self._sock.send(wire.encoder.encode(wire.Cancel(rid)), flags=zmq.NOBLOCK)

    def _drained(self, rid: int) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self._sock.send(wire.encoder.encode(wire.Drained(rid)), flags=zmq.NOBLOCK)

    @staticmethod
    def _encode(frame: wire.Call) -> bytes:
        try:
            return wire.encoder.encode(frame)
        except UnicodeEncodeError:
            raise _not_text(frame.op) from None
        except OverflowError:  # the schemas bound every integer; this guards the wire itself
            raise InvalidInput("a number in the request is out of range") from None

    async def _unary(self, op: wire.Operation, rid: int | None = None) -> Any:
        if self._gone is not None:
            raise self._gone
        rid = next(self._ids) if rid is None else rid
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[rid] = fut
        try:
            await self._sock.send(self._encode(wire.Call(rid, op)))
            return await fut
        except asyncio.CancelledError:
            if self._calls.pop(rid, None) is not None:
                self._cancel(rid)  # the caller left: the engine stops and commits nothing
            raise

    async def _open(self, op: wire.Generate | wire.SessionGenerate) -> RemoteGeneration:
        if self._gone is not None:
            raise self._gone
        rid = next(self._ids)
        frame = self._encode(wire.Call(rid, op))
        gen = RemoteGeneration(self, rid, self.stream_buffer_bytes)
        self._streams[rid] = gen
        try:
            await self._sock.send(frame)
            await gen.opened  # the engine's own errors at start (unknown session, bad prompt)
        except asyncio.CancelledError:
            await gen.aclose()
            raise
        return gen

    # -- EngineClient
    def hold_stream(self, owner: str | None, rows: int = 1) -> RemoteHold:
        return RemoteHold(self, next(self._ids), owner, rows)

    def _slot(self) -> wire.SlotRef | None:
        """The request's stream slot (`STREAM_HOLD`), for its generation to carry."""
        hold = STREAM_HOLD.get()
        return hold.ref_for(self) if isinstance(hold, RemoteHold) else None

    async def health(self) -> dict[str, str]:
        """The engine's own answer, or why there is none: a frozen or dead engine process
        answers nothing, and readiness must say so rather than wait with the probe."""
        try:
            out: wire.Problems = await asyncio.wait_for(
                self._unary(wire.Health()), HEALTH_TIMEOUT_S
            )
        except TimeoutError:
            return {"engine": f"the engine process did not answer within {HEALTH_TIMEOUT_S:g} s"}
        except EngineGone as e:
            return {"engine": e.message}
        return out.problems

    async def predict(self, model: str, inputs: list[str], top_k: int) -> list[Output | None]:
        # tokenized here, in the worker: the engine process only runs the model
        m = self.catalog.get(model)
        rows = [m.encode_full(t, f"inputs[{i}]") for i, t in enumerate(inputs)]
        out: wire.Outputs = await self._unary(wire.PredictIds(model, rows, top_k))
        return out.outputs

    async def logits(self, model: str, rows: list[list[int]]) -> np.ndarray:
        out: wire.TensorValue = await self._unary(wire.Logits(model, rows))
        return out.tensor.array()

    async def generate(self, model: str, params: GenerateParams) -> RemoteGeneration:
        return await self._open(wire.Generate(model, params, self._slot()))

    async def create_session(
        self,
        model: str | None,
        session_id: str | None,
        ttl_s: float | None,
        state: bytes | None,
        owner: str | None,
    ) -> SessionInfo:
        out: wire.Session = await self._unary(
            wire.CreateSession(model, session_id, ttl_s, state, owner)
        )
        return out.info

    async def get_session(self, session_id: str, owner: str | None) -> SessionInfo:
        out: wire.Session = await self._unary(wire.GetSession(session_id, owner))
        return out.info

    async def delete_session(self, session_id: str, owner: str | None) -> None:
        await self._unary(wire.DeleteSession(session_id, owner))

    async def reset(
        self, session_id: str, expected_version: int | None, key: str | None, owner: str | None
    ) -> SessionInfo:
        out: wire.Session = await self._unary(wire.Reset(session_id, expected_version, key, owner))
        return out.info

    async def feed(
        self,
        session_id: str,
        text: str,
        top_k: int,
        expected_version: int | None,
        key: str | None,
        owner: str | None,
    ) -> FeedResult:
        out: wire.Fed = await self._unary(
            wire.Feed(session_id, text, top_k, expected_version, key, owner)
        )
        return out.result

    async def session_generate(
        self,
        session_id: str,
        params: GenerateParams,
        expected_version: int | None,
        key: str | None,
        owner: str | None,
    ) -> RemoteGeneration:
        return await self._open(
            wire.SessionGenerate(session_id, params, expected_version, key, owner, self._slot())
        )

    async def export_state(self, session_id: str, owner: str | None) -> StateExport:
        out: wire.State = await self._unary(wire.ExportState(session_id, owner))
        return out.export

    async def sequence_step(
        self,
        model: str,
        seq: SequenceRef,
        text: str | None,
        ids: list[int] | None,
        owner: str | None,
    ) -> np.ndarray:
        out: wire.TensorValue = await self._unary(wire.SequenceStep(model, seq, text, ids, owner))
        return out.tensor.array()

    async def live_sessions(self) -> int:
        out: wire.Count = await self._unary(wire.LiveSessions())
        return out.n


def _not_text(op: wire.Operation) -> ServiceError:
    """The error a string that cannot cross the wire (a lone surrogate) gets: the one the
    in-process engine gives (`catalog.require_unicode`), naming the same field."""
    texts: list[tuple[str, str | None]] = []
    if isinstance(op, wire.Predict):
        texts = [(f"inputs[{i}]", t) for i, t in enumerate(op.inputs)]
    elif isinstance(op, wire.Feed):
        texts = [("text", op.text)]
    elif isinstance(op, wire.Generate | wire.SessionGenerate):
        texts = [("prompt", op.params.prompt)]
        texts += [(f"stop[{i}]", t) for i, t in enumerate(op.params.stop)]
    elif isinstance(op, wire.SequenceStep):
        texts = [("TEXT", op.text)]
    for field, text in texts:
        if text is not None:
            try:
                require_unicode(text, field)
            except ServiceError as e:
                return e
    return InvalidInput("the request holds a string that is not valid Unicode text")


def worker_identity(pid: int) -> bytes:
    return f"w{pid}".encode()
