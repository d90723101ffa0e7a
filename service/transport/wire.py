"""The engine boundary on the wire: what an API worker process and the engine process say to each
other over ZeroMQ (a DEALER per worker, one ROUTER in the engine), msgpack-encoded by msgspec.

Every frame is one `Frame` struct: a request from a worker (`Call` with any operation of
`protocol/ops.py`, or `Cancel`), or an answer from the engine (`Result`, `StepIds`, `Tokens`, `Failed`). A
`Result` carries its answer encoded on its own (`msgspec.Raw`): the worker decodes it as the type
its operation names (`decode_result`), so no operation or answer is listed here. Arrays cross as
`Tensor`; errors as `ErrorInfo`, which the worker raises again as the `ServiceError` registered
for its code, so a surface cannot tell a remote engine from a local one. `WIRE_VERSION` must match
on both ends (checked by `Hello`).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Union

import msgspec
import numpy as np

from service import errors
from service.protocol.messages import Message, StepLogprob
from service.protocol.ops import Op, StreamOp, operations

WIRE_VERSION = 15  # 2: a message from the engine may carry several frames; 3: HoldStream;
# 4: a generation names the HoldStream call it runs under; 5: ... and takes it (`SlotRef`);
# 6: those frames travel as ONE msgpack array (`frames_decoder`), not one message part each;
# 7: a session generation commits only after its worker says the client took every token
# (`Finishing` / `Drained`); 8: a slot holds `rows` decode rows (`SlotRef.rows`, `HoldStream.rows`);
# 9: `Health` (readiness asks the engine what keeps it from serving); 10: operations are
# `protocol/ops.py`'s structs, a `Result` carries its answer as the operation's result type, a
# `Call` carries a stream's slot, an `ErrorInfo` is known by its code; 11: `StepTokens`;
# 12: `StepIds` replaces `StepTokens` (the worker decodes a routed stream's tokens and matches
# its stop strings' text: `Opened.model`, `Drained.text`); 13: the catalog lists every version
# serving with its settings, and comes again to every worker when it changes (`CatalogInfo`); 14: a `Call` may carry its caller's trace
# context (`Call.trace`, W3C `traceparent` / `tracestate`: service/tracing.py); 15: a worker's
# frames travel as one array per message too (`incoming_decoder`), all but its `Hello`


class Tensor(Message, frozen=True):
    dtype: str
    shape: tuple[int, ...]
    data: bytes

    @classmethod
    def of(cls, a: np.ndarray) -> Tensor:
        a = np.ascontiguousarray(a)
        return cls(a.dtype.str, tuple(a.shape), a.tobytes())

    def array(self) -> np.ndarray:
        return np.frombuffer(self.data, dtype=np.dtype(self.dtype)).reshape(self.shape)


# -- transport operations (worker -> engine; the engine's own are `protocol/ops.py`) ----------


class Hello(Message, frozen=True, tag="hello"):
    """The first call of a worker: the engine answers `CatalogInfo`."""

    wire_version: int


class SlotRef(Message, frozen=True):
    """The stream slot a generation runs under (`stream_slots.py`), named by a call id of the
    worker's (`rid`). The first frame naming it takes it for `owner`, or records the refusal; a
    refused slot refuses every generation naming it, with the slot's own error (`overloaded`,
    `stream_limit`). It is held until the worker sends `Cancel(rid)` or dies, so one HTTP stream
    costs no frame of its own but that `Cancel`."""

    rid: int
    owner: str | None
    rows: int = 1  # decode rows it holds (an OpenAI completion's n x prompts)


class HoldStream(Message, frozen=True, tag="hold_stream"):
    """Take the stream slot `SlotRef(rid, owner)` of this call's `rid` now and answer (`None`)
    once taken, or `Failed`. A WebSocket asks this way when it connects (it must know before it
    accepts); an HTTP stream's slot is taken by its first generation instead (`Call.slot`)."""

    owner: str | None
    rows: int = 1


if TYPE_CHECKING:
    Operation = Op[Any] | StreamOp | Hello | HoldStream
else:  # every operation the engine has, as msgspec decodes a tagged union
    Operation = Union[(Hello, HoldStream, *operations())]


# -- what the engine says about its models (the answer to Hello) ------------------------------


class ModelEntry(Message, frozen=True):
    manifest: dict[str, Any]  # ModelManifest.model_dump(mode="json"): the worker rebuilds it
    sha256: str
    variant: str | None
    provider: str
    created: int
    settings: dict[str, Any]  # its settings in force
    default: bool  # the version a request naming only the model gets
    draining: bool = False  # being unloaded (its sessions' generations still decode by it)


class CatalogInfo(Message, frozen=True, tag="catalog"):
    """The models serving: the answer to `Hello`, and sent again to every worker when they
    change (a load or an unload), numbered so that a worker keeps the newest (`generation`)."""

    wire_version: int
    protocol_version: int
    models: list[ModelEntry]
    failed: dict[str, str]
    generation: int = 0


class Token(Message, frozen=True):
    text: str
    token_id: int
    index: int
    logprob: StepLogprob | None = None


class ErrorInfo(Message, frozen=True):
    status: int
    code: str
    message: str
    field: str | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)


# -- frames ----------------------------------------------------------------------------------


class Call(Message, frozen=True, tag="call"):
    rid: int
    op: Operation
    slot: SlotRef | None = None  # a generation's stream slot (see SlotRef)
    # the W3C trace context of the worker's span for this call (tracing on and sampled), of
    # which the engine's spans for it are children
    trace: dict[str, str] | None = None


class Cancel(Message, frozen=True, tag="cancel"):
    rid: int


class Result(Message, frozen=True, tag="result"):
    """The answer to a call, encoded as its operation's result type (`decode_result`); for a
    stream, its end (a `GenerationResult`)."""

    rid: int
    value: msgspec.Raw


class Opened(Message, frozen=True, tag="opened"):
    """A stream started (its errors from here on end the stream instead of the call). With
    `model`, its tokens come as ids (`StepIds`) for the worker to decode with that model's
    vocabulary, and its result's text is the worker's to fill in."""

    rid: int
    model: str | None = None


class Tokens(Message, frozen=True, tag="tokens"):
    """Tokens of one stream that the engine decoded itself (one with logprobs: their
    alternatives are text), in order, one frame per token as it is emitted; all the frames for
    a worker ready in one loop iteration travel in one message."""

    rid: int
    tokens: list[Token]


class StepIds(Message, frozen=True, tag="ids"):
    """One decode step's tokens for one worker: stream `rids[i]` got token `ids[i]`, both as
    little-endian arrays (int64, int32) copied out of the engine's batch arrays, so the engine's
    Python per step is one frame per worker whatever the streams. The worker decodes them (the
    stream's `Opened.model`) and counts each stream's positions. `ends` (int64): the streams
    whose last token this is (a step where none ends leaves it empty), so the worker releases
    the text its stop matcher still holds back when a stream ends by length."""

    rids: bytes
    ids: bytes
    ends: bytes = b""

    @classmethod
    def of(cls, rids: np.ndarray, ids: np.ndarray, ends: np.ndarray | None = None) -> StepIds:
        last = b"" if ends is None or not len(ends) else ends.astype("<i8").tobytes()
        return cls(rids.astype("<i8", copy=False).tobytes(), ids.astype("<i4").tobytes(), last)

    def arrays(self) -> tuple[list[int], list[int]]:
        return (
            np.frombuffer(self.rids, "<i8").tolist(),
            np.frombuffer(self.ids, "<i4").tolist(),
        )

    def ending(self) -> set[int]:
        return set(np.frombuffer(self.ends, "<i8").tolist())


class Finishing(Message, frozen=True, tag="finishing"):
    """Engine -> worker: a session generation has produced its last token and waits to commit
    until the worker answers `Drained` (or `Cancel`: then nothing is committed)."""

    rid: int


class Drained(Message, frozen=True, tag="drained"):
    """Worker -> engine: the client has been handed every token of the stream `rid` (its
    consumer asked for more after the last one); the engine may commit. `text`: what the
    client was handed, for a stream whose tokens the worker decoded (the committed result's)."""

    rid: int
    text: str | None = None


class Failed(Message, frozen=True, tag="failed"):
    rid: int
    error: ErrorInfo


Frame = (
    Call | Cancel | Drained | Result | Opened | StepIds | Tokens | Finishing | Failed | CatalogInfo
)


def _encode_array(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):  # an answer that is an array (v2's logits)
        return Tensor.of(obj)
    raise NotImplementedError(f"cannot send {type(obj).__name__}")


def _decode_array(kind: type, obj: Any) -> Any:
    if kind is np.ndarray:
        return msgspec.convert(obj, Tensor).array()
    raise NotImplementedError(f"cannot read {kind.__name__}")


encoder = msgspec.msgpack.Encoder(enc_hook=_encode_array)
decoder = msgspec.msgpack.Decoder(Frame)  # one frame
# worker -> engine: every frame the worker had ready in one loop iteration, as one array
# (`channel.py`), or one frame alone (a `Hello`, which an engine of any wire version reads)
incoming_decoder = msgspec.msgpack.Decoder(Frame | list[Frame])
# engine -> worker: every frame ready for that worker in one array. One ZeroMQ message part per
# frame cost a send each, and each send gives up the GIL: at 256 streams a quarter of the
# engine's samples were those sends and the wake-ups around them (py-spy, docs/benchmarks.md)
frames_decoder = msgspec.msgpack.Decoder(list[Frame])


def answer(value: Any) -> msgspec.Raw:
    """An operation's answer, for a `Result`."""
    return msgspec.Raw(encoder.encode(value))


@functools.cache
def _result_decoder(kind: Any) -> msgspec.msgpack.Decoder[Any]:
    return msgspec.msgpack.Decoder(kind, dec_hook=_decode_array)


def decode_result(kind: Any, raw: msgspec.Raw) -> Any:
    """A `Result`'s answer as `kind` (an operation's `result_type()`)."""
    return _result_decoder(kind).decode(raw)


def error_info(e: BaseException) -> ErrorInfo:
    if isinstance(e, errors.ServiceError):
        return ErrorInfo(e.status, e.code, e.message, e.field, dict(e.headers or {}))
    return ErrorInfo(500, "engine_error", f"engine failed: {type(e).__name__}")


def raise_error(info: ErrorInfo) -> errors.ServiceError:
    """The `ServiceError` an `ErrorInfo` stands for: the class registered for its code (a
    plain `ServiceError` for a code this worker does not know), with its status and field."""
    cls = errors.error_class(info.code)
    e = cls.__new__(cls)
    errors.ServiceError.__init__(
        e, info.message, status=info.status, code=info.code, field=info.field
    )
    if info.headers:
        e.headers = dict(info.headers)
    return e
