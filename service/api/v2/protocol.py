"""Open Inference Protocol v2 messages (KServe v2 REST, as Triton implements it), the tensor names
each task exposes, and the request `parameters` validated into a distinct `Sequence` type."""

from __future__ import annotations

import importlib.metadata
import json
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError

from service.api.bounds import Capped, StrictIn
from service.api.schemas import SESSION_ID
from service.api.v2.binary import BinaryProtocolError
from service.protocol.catalog import Catalog, ModelView, newest

# -- tensor names (THE place they are written) -----------------------------------------------

TEXT = "TEXT"  # BYTES [B]: UTF-8 texts (classifiers and language models)
TOKEN_IDS = "TOKEN_IDS"  # INT64 [B, T]: token ids (language models)
LABEL = "LABEL"  # BYTES [B]: most likely label (classifiers)
PROBS = "PROBS"  # FP32 [B, K]: label probabilities / next-token probabilities
LOGITS = "LOGITS"  # FP32 [B, K]: the raw logits PROBS is the softmax of


class TensorMetadata(BaseModel):
    name: str = Field(description="Tensor name.")
    datatype: str = Field(description="v2 datatype, e.g. `BYTES`, `INT64`, `FP32`.")
    shape: list[int] = Field(description="Shape; -1 is a variable dimension.")


def input_specs(m: ModelView) -> list[TensorMetadata]:
    specs = [TensorMetadata(name=TEXT, datatype="BYTES", shape=[-1])]
    if m.manifest.task == "next_token":
        specs.append(TensorMetadata(name=TOKEN_IDS, datatype="INT64", shape=[-1, -1]))
    return specs


def output_specs(m: ModelView) -> list[TensorMetadata]:
    k = len(m.manifest.labels) if m.manifest.labels else m.tokenizer.vocab_size
    specs = [
        TensorMetadata(name=PROBS, datatype="FP32", shape=[-1, k]),
        TensorMetadata(name=LOGITS, datatype="FP32", shape=[-1, k]),
    ]
    if m.manifest.task == "classify":
        specs.insert(0, TensorMetadata(name=LABEL, datatype="BYTES", shape=[-1]))
    return specs


# -- metadata ----------------------------------------------------------------------------------


class ServerMetadata(BaseModel):
    name: str = Field(description="Server name (`rnnserve`).")
    version: str = Field(description="Server version.")
    extensions: list[str] = Field(description="Protocol extensions this server implements.")


EXTENSIONS = ["binary_tensor_data", "sequence"]


def server_metadata() -> ServerMetadata:
    """The server's v2 metadata (HTTP and gRPC alike)."""
    try:
        version = importlib.metadata.version("rnnserve")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        version = "0"
    return ServerMetadata(name="rnnserve", version=version, extensions=EXTENSIONS)


class ModelMetadata(BaseModel):
    name: str = Field(description="Model name.")
    versions: list[str] = Field(description="Versions served (one: the newest artifact).")
    platform: str = Field(description="Always `onnxruntime_onnx`.")
    inputs: list[TensorMetadata] = Field(description="Input tensors (send exactly one).")
    outputs: list[TensorMetadata] = Field(description="Output tensors.")
    parameters: dict[str, Any] = Field(
        description="rnnserve extension: `task`, `labels` (PROBS column order) or `vocab_size`."
    )


class ModelReady(BaseModel):
    name: str = Field(description="Model name.")
    ready: bool = Field(description="True while the model serves.")


def metadata_of(m: ModelView, catalog: Catalog) -> ModelMetadata:
    """A model's v2 metadata (HTTP and gRPC alike)."""
    man = m.manifest
    params: dict[str, Any] = {"task": man.task}
    if man.labels is not None:
        params["labels"] = man.labels
    else:
        params["vocab_size"] = m.tokenizer.vocab_size
    return ModelMetadata(
        name=m.name,
        versions=newest([v.manifest.version for v in catalog.versions_of(m.name)]),
        platform="onnxruntime_onnx",
        inputs=input_specs(m),
        outputs=output_specs(m),
        parameters=params,
    )


def config_of(m: ModelView) -> dict[str, Any]:
    """Triton's model configuration fields that apply, and the settings in force as they are
    (`settings`: the model's settings.json over the server's)."""
    st = m.settings
    policy = st.get("version_policy") or {}
    return {
        "name": m.name,
        "version": m.manifest.version,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": st.get("max_batch_size", 0),
        "version_policy": {
            k: ({} if v is True else {"num_versions": v} if k == "latest" else {"versions": v})
            for k, v in policy.items()
        },
        "dynamic_batching": {
            "max_queue_delay_microseconds": round(float(st.get("max_wait_ms", 0)) * 1000)
        },
        "sequence_batching": {} if m.manifest.streamable else None,
        "parameters": {
            k: {"string_value": v if isinstance(v, str) else json.dumps(v)}
            for k, v in st.items()
            if v is not None
        },
        "settings": st,
    }


# -- inference ---------------------------------------------------------------------------------

Parameter = bool | int | float | str
T = TypeVar("T")
MAX_TENSORS = 64  # inputs or outputs in one request (a model here has one input, four outputs)
MAX_DIMS = 16
Tensors = Annotated[list[T], Field(max_length=MAX_TENSORS, fail_fast=True)]


class _Msg(StrictIn):
    """A v2 request object (see `service/api/bounds.py`): its lists and maps are capped before
    their items are read."""


class RequestInput(_Msg):
    name: str = Field(description="Input tensor name (see the model metadata).")
    shape: Annotated[list[int], Field(max_length=MAX_DIMS, fail_fast=True)] = Field(
        description="Tensor shape."
    )
    datatype: str = Field(description="v2 datatype.")
    parameters: Capped[str, Parameter] | None = Field(
        None, description="`binary_data_size` when the data follows the JSON in binary."
    )
    data: list[Any] | None = Field(None, description="Row-major data (flat or nested).")


class RequestOutput(_Msg):
    name: str = Field(description="Output tensor name.")
    parameters: Capped[str, Parameter] | None = Field(
        None, description="`binary_data`: return this output in binary."
    )


class InferRequest(_Msg):
    id: str | None = Field(None, description="Echoed in the response.")
    parameters: Capped[str, Parameter] | None = Field(
        None,
        description="`sequence_id`, `sequence_start`, `sequence_end`, `binary_data_output`; "
        "`priority` and `timeout` are accepted and ignored.",
    )
    inputs: Tensors[RequestInput] = Field(min_length=1, description="The input tensors.")
    outputs: Tensors[RequestOutput] | None = Field(None, description="Default: every output.")


class ResponseOutput(BaseModel):
    name: str = Field(description="Output tensor name.")
    datatype: str = Field(description="v2 datatype.")
    shape: list[int] = Field(description="Tensor shape.")
    parameters: dict[str, Parameter] | None = Field(
        None, description="`binary_data_size` when the data follows the JSON in binary."
    )
    data: list[Any] | None = Field(None, description="Row-major flat data (JSON outputs).")


class InferResponse(BaseModel):
    model_name: str = Field(description="The model that answered.")
    model_version: str = Field(description="Its version.")
    id: str | None = Field(None, description="The request's `id`, echoed.")
    outputs: list[ResponseOutput] = Field(description="The output tensors asked for.")


class ErrorResponse(BaseModel):
    error: str = Field(description="What went wrong.")


def parse_request(header: dict[str, Any]) -> InferRequest:
    try:
        return InferRequest.model_validate(header)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BinaryProtocolError(f"{where}: {first['msg']}", field=where) from None


# -- request parameters ------------------------------------------------------------------------

_REQUEST_PARAMS = {
    "sequence_id",
    "sequence_start",
    "sequence_end",
    "binary_data_output",
    "priority",
    "timeout",
}
_SESSION_ID = re.compile(SESSION_ID)
UINT64_MAX = 2**64 - 1


@dataclass(frozen=True)
class Sequence:
    """Triton's sequence parameters, validated. `session_id` is the session store key."""

    session_id: str
    start: bool
    end: bool
    kind: Literal["uint64", "string"]

    @property
    def label(self) -> str:
        return self.session_id if self.kind == "uint64" else repr(self.session_id)


def _flag(params: dict[str, Parameter], key: str) -> bool:
    v = params.get(key, False)
    if not isinstance(v, bool):
        raise BinaryProtocolError(f"parameter {key!r} must be a boolean", field=f"parameters.{key}")
    return v


def check_parameters(params: dict[str, Parameter]) -> None:
    unknown = sorted(set(params) - _REQUEST_PARAMS)
    if unknown:
        raise BinaryProtocolError(
            f"unsupported request parameter(s) {unknown}; supported: {sorted(_REQUEST_PARAMS)}",
            field="parameters",
        )


def binary_output_default(params: dict[str, Parameter]) -> bool:
    return _flag(params, "binary_data_output")


def parse_sequence(params: dict[str, Parameter]) -> Sequence | None:
    """The request's sequence, or None for a stateless request (no id, or Triton's 0 / "")."""
    start, end = _flag(params, "sequence_start"), _flag(params, "sequence_end")
    sid = params.get("sequence_id")
    if isinstance(sid, bool | float):
        raise BinaryProtocolError(
            "sequence_id must be an unsigned 64-bit integer or a string",
            field="parameters.sequence_id",
        )
    if sid is None or sid == 0 or sid == "":
        if start or end:
            raise BinaryProtocolError(
                "sequence_start / sequence_end need a non-zero sequence_id",
                field="parameters.sequence_id",
            )
        return None
    if isinstance(sid, int):
        if not 0 < sid <= UINT64_MAX:
            raise BinaryProtocolError(
                f"sequence_id {sid} is outside the uint64 range", field="parameters.sequence_id"
            )
        return Sequence(str(sid), start, end, "uint64")
    if not _SESSION_ID.match(sid):
        raise BinaryProtocolError(
            f"string sequence_id {sid!r} must match {SESSION_ID}", field="parameters.sequence_id"
        )
    return Sequence(sid, start, end, "string")
