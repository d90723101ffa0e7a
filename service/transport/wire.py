"""The engine boundary on the wire: what an API worker process and the engine process say to each
other over ZeroMQ (a DEALER per worker, one ROUTER in the engine), msgpack-encoded by msgspec.

Every frame is one `Frame` struct: a request from a worker (`Call` with a typed operation, or
`Cancel`), or an answer from the engine (`Result`, `Tokens`, `Failed`). Operations and results
are the typed messages of `protocol.py`; arrays cross as `Tensor`; errors as `ErrorInfo`, which
the worker raises again as the same `ServiceError`, so a surface cannot tell a remote engine from
a local one. `WIRE_VERSION` must match on both ends (checked by `Hello`).
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from service import errors
from service.protocol.messages import (
    FeedResult,
    GenerateParams,
    GenerationResult,
    Message,
    Output,
    SequenceRef,
    SessionInfo,
    StateExport,
    StepLogprob,
)

WIRE_VERSION = 9  # 2: a message from the engine may carry several frames; 3: HoldStream;
# 4: a generation names the HoldStream call it runs under; 5: ... and takes it (`SlotRef`);
# 6: those frames travel as ONE msgpack array (`frames_decoder`), not one message part each;
# 7: a session generation commits only after its worker says the client took every token
# (`Finishing` / `Drained`); 8: a slot holds `rows` decode rows (`SlotRef.rows`, `HoldStream.rows`);
# 9: `Health` (readiness asks the engine what keeps it from serving)


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


# -- operations (worker -> engine) -----------------------------------------------------------


class Hello(Message, frozen=True, tag="hello"):
    wire_version: int


class Predict(Message, frozen=True, tag="predict"):
    model: str
    inputs: list[str]
    top_k: int


class PredictIds(Message, frozen=True, tag="predict_ids"):
    """`Predict` on texts the worker tokenized (the engine only runs the model)."""

    model: str
    rows: list[list[int]]
    top_k: int


class Logits(Message, frozen=True, tag="logits"):
    model: str
    rows: list[list[int]]


class SlotRef(Message, frozen=True):
    """The stream slot a generation runs under (`stream_slots.py`), named by a call id of the
    worker's (`rid`). The first frame naming it takes it for `owner`, or records the refusal; a
    refused slot refuses every generation naming it, with the slot's own error (`overloaded`,
    `stream_limit`). It is held until the worker sends `Cancel(rid)` or dies, so one HTTP stream
    costs no frame of its own but that `Cancel`."""

    rid: int
    owner: str | None
    rows: int = 1  # decode rows it holds (an OpenAI completion's n x prompts)


class Generate(Message, frozen=True, tag="generate"):
    model: str
    params: GenerateParams
    slot: SlotRef | None = None


class CreateSession(Message, frozen=True, tag="create_session"):
    model: str | None
    session_id: str | None
    ttl_s: float | None
    state: bytes | None
    owner: str | None


class GetSession(Message, frozen=True, tag="get_session"):
    session_id: str
    owner: str | None


class DeleteSession(Message, frozen=True, tag="delete_session"):
    session_id: str
    owner: str | None


class Reset(Message, frozen=True, tag="reset"):
    session_id: str
    expected_version: int | None
    key: str | None
    owner: str | None


class Feed(Message, frozen=True, tag="feed"):
    session_id: str
    text: str
    top_k: int
    expected_version: int | None
    key: str | None
    owner: str | None


class SessionGenerate(Message, frozen=True, tag="session_generate"):
    session_id: str
    params: GenerateParams
    expected_version: int | None
    key: str | None
    owner: str | None
    slot: SlotRef | None = None  # as in Generate


class ExportState(Message, frozen=True, tag="export_state"):
    session_id: str
    owner: str | None


class SequenceStep(Message, frozen=True, tag="sequence_step"):
    model: str
    seq: SequenceRef
    text: str | None
    ids: list[int] | None
    owner: str | None


class LiveSessions(Message, frozen=True, tag="live_sessions"):
    pass


class HoldStream(Message, frozen=True, tag="hold_stream"):
    """Take the stream slot `SlotRef(rid, owner)` of this call's `rid` now and answer: `Empty`
    once taken, or `Failed`. A WebSocket asks this way when it connects (it must know before it
    accepts); an HTTP stream's slot is taken by its first generation instead (`SlotRef`)."""

    owner: str | None
    rows: int = 1


class Health(Message, frozen=True, tag="health"):
    """What keeps the engine from serving (`Problems`): a model whose engine thread has work
    and has not moved for `stall_timeout_s`. Asked by a worker's readiness probe."""


Operation = (
    Hello
    | Health
    | Predict
    | PredictIds
    | Logits
    | Generate
    | CreateSession
    | GetSession
    | DeleteSession
    | Reset
    | Feed
    | SessionGenerate
    | ExportState
    | SequenceStep
    | LiveSessions
    | HoldStream
)
STREAMING = (Generate, SessionGenerate)


# -- what the engine says about its models (the answer to Hello) ------------------------------


class ModelEntry(Message, frozen=True):
    manifest: dict[str, Any]  # ModelManifest.model_dump(mode="json"): the worker rebuilds it
    sha256: str
    variant: str | None
    provider: str
    created: int


class CatalogInfo(Message, frozen=True, tag="catalog"):
    wire_version: int
    protocol_version: int
    models: list[ModelEntry]
    failed: dict[str, str]


# -- answers (engine -> worker) --------------------------------------------------------------


class Empty(Message, frozen=True, tag="empty"):
    pass


class Outputs(Message, frozen=True, tag="outputs"):
    outputs: list[Output | None]


class Count(Message, frozen=True, tag="count"):
    n: int


class TensorValue(Message, frozen=True, tag="tensor"):
    tensor: Tensor


class Session(Message, frozen=True, tag="session"):
    info: SessionInfo


class Fed(Message, frozen=True, tag="fed"):
    result: FeedResult


class State(Message, frozen=True, tag="state"):
    export: StateExport


class Problems(Message, frozen=True, tag="problems"):
    problems: dict[str, str]  # what -> why (empty: healthy)


class Generated(Message, frozen=True, tag="generated"):
    """A stream's end (its `GenerationResult`)."""

    result: GenerationResult


Value = (
    CatalogInfo
    | Empty
    | Outputs
    | Count
    | TensorValue
    | Session
    | Fed
    | State
    | Generated
    | Problems
)


class Token(Message, frozen=True):
    text: str
    token_id: int
    index: int
    logprob: StepLogprob | None = None


class ErrorInfo(Message, frozen=True):
    kind: str  # the ServiceError subclass's name, raised again on the worker
    status: int
    code: str
    message: str
    field: str | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)


# -- frames ----------------------------------------------------------------------------------


class Call(Message, frozen=True, tag="call"):
    rid: int
    op: Operation


class Cancel(Message, frozen=True, tag="cancel"):
    rid: int


class Result(Message, frozen=True, tag="result"):
    """The answer to a call; for a stream, its end (`GenerationResult`)."""

    rid: int
    value: Value


class Opened(Message, frozen=True, tag="opened"):
    """A stream started (its errors from here on end the stream instead of the call)."""

    rid: int


class Tokens(Message, frozen=True, tag="tokens"):
    """Tokens of one stream, in order (the engine posts one frame per token as it is emitted;
    all the frames for a worker ready in one loop iteration travel in one message)."""

    rid: int
    tokens: list[Token]


class Finishing(Message, frozen=True, tag="finishing"):
    """Engine -> worker: a session generation has produced its last token and waits to commit
    until the worker answers `Drained` (or `Cancel`: then nothing is committed)."""

    rid: int


class Drained(Message, frozen=True, tag="drained"):
    """Worker -> engine: the client has been handed every token of the stream `rid` (its
    consumer asked for more after the last one); the engine may commit."""

    rid: int


class Failed(Message, frozen=True, tag="failed"):
    rid: int
    error: ErrorInfo


Frame = Call | Cancel | Drained | Result | Opened | Tokens | Finishing | Failed

encoder = msgspec.msgpack.Encoder()
decoder = msgspec.msgpack.Decoder(Frame)  # worker -> engine: one frame per message
# engine -> worker: every frame ready for that worker in one array. One ZeroMQ message part per
# frame cost a send each, and each send gives up the GIL: at 256 streams a quarter of the
# engine's samples were those sends and the wake-ups around them (py-spy, docs/benchmarks.md)
frames_decoder = msgspec.msgpack.Decoder(list[Frame])

# a status and code the worker cannot map to a known class are raised as a plain ServiceError
_KINDS: dict[str, type[errors.ServiceError]] = {
    c.__name__: c
    for c in vars(errors).values()
    if isinstance(c, type) and issubclass(c, errors.ServiceError)
}


def error_info(e: BaseException) -> ErrorInfo:
    if isinstance(e, errors.ServiceError):
        return ErrorInfo(
            type(e).__name__, e.status, e.code, e.message, e.field, dict(e.headers or {})
        )
    return ErrorInfo("EngineError", 500, "engine_error", f"engine failed: {type(e).__name__}")


def raise_error(info: ErrorInfo) -> errors.ServiceError:
    """The `ServiceError` an `ErrorInfo` stands for (same class, status, code, field)."""
    cls = _KINDS.get(info.kind, errors.ServiceError)
    e = cls.__new__(cls)
    errors.ServiceError.__init__(
        e, info.message, status=info.status, code=info.code, field=info.field
    )
    if info.headers:
        e.headers = dict(info.headers)
    return e
