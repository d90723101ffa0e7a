"""gRPC messages <-> the v2 request HTTP reads, and v2 outputs -> a gRPC response.

A `ModelInferRequest` becomes the same `InferRequest` (pydantic, bounded) and binary tail that
an HTTP body with Triton's binary extension gives: an input sent as `raw_input_contents` or as
typed `contents` travels as raw bytes with its `binary_data_size`, so one decoder
(`v2/binary.py`) checks every tensor, whichever wire it came on, and the rules (shapes,
datatypes, row and text limits, sequences) are `v2/serving.py`'s for both.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service.api.grpc import inference_pb2 as pb
from service.api.v2 import binary
from service.api.v2.binary import BinaryProtocolError
from service.api.v2.protocol import MAX_TENSORS, InferRequest, Parameter, parse_request

# the typed `contents` field that carries each datatype (FP16 and BF16 have none: raw only)
_CONTENTS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
MAX_PARAMETERS = 64  # as the HTTP request's capped maps (`api/bounds.py`)


def parameter(value: pb.InferParameter, where: str) -> Parameter:
    """One `InferParameter` as the JSON value HTTP would carry."""
    kind = value.WhichOneof("parameter_choice")
    if kind is None:
        raise BinaryProtocolError(f"parameter {where!r} has no value", field=where)
    out: Parameter = getattr(value, kind)
    return out


def parameters(params: Any, where: str) -> dict[str, Parameter]:
    """A protobuf map of `InferParameter`s as a dict, bounded like HTTP's."""
    if len(params) > MAX_PARAMETERS:
        raise BinaryProtocolError(f"at most {MAX_PARAMETERS} parameters", field=where)
    return {k: parameter(v, f"{where}.{k}" if where else k) for k, v in params.items()}


def request(
    msg: pb.ModelInferRequest, skip: frozenset[str] = frozenset()
) -> tuple[InferRequest, bytes]:
    """The v2 request and its binary tail, as HTTP would have read them; request parameters
    named in `skip` (the gRPC surface's own) are left out."""
    if len(msg.inputs) > MAX_TENSORS or len(msg.outputs) > MAX_TENSORS:
        raise BinaryProtocolError(f"at most {MAX_TENSORS} inputs and outputs", field="inputs")
    raw = list(msg.raw_input_contents)
    if raw and len(raw) != len(msg.inputs):
        raise BinaryProtocolError(
            f"raw_input_contents holds {len(raw)} tensors for {len(msg.inputs)} inputs "
            "(one per input, in order)",
            field="raw_input_contents",
        )
    inputs: list[dict[str, Any]] = []
    parts: list[bytes] = []
    for i, inp in enumerate(msg.inputs):
        params = parameters(inp.parameters, f"{inp.name}.parameters")
        if "binary_data_size" in params:  # HTTP's: here the raw bytes say their size
            raise BinaryProtocolError(
                f"input {inp.name!r}: binary_data_size is not a gRPC parameter",
                field=f"{inp.name}.parameters",
            )
        has_contents = inp.HasField("contents")
        if raw and has_contents:
            raise BinaryProtocolError(
                f"input {inp.name!r} has both contents and raw_input_contents", field=inp.name
            )
        if raw:
            data = raw[i]
        elif has_contents:
            data = _contents_bytes(inp)
        else:
            raise BinaryProtocolError(
                f"input {inp.name!r} has neither contents nor raw_input_contents", field=inp.name
            )
        params["binary_data_size"] = len(data)
        parts.append(data)
        inputs.append(
            {
                "name": inp.name,
                "datatype": inp.datatype,
                "shape": list(inp.shape),
                "parameters": params,
            }
        )
    header: dict[str, Any] = {"inputs": inputs}
    if msg.id:
        header["id"] = msg.id
    top = {k: v for k, v in parameters(msg.parameters, "").items() if k not in skip}
    if top:
        header["parameters"] = top
    if msg.outputs:
        header["outputs"] = [
            {"name": o.name, "parameters": parameters(o.parameters, f"{o.name}.parameters")}
            for o in msg.outputs
        ]
    return parse_request(header), b"".join(parts)


def _contents_bytes(inp: pb.ModelInferRequest.InferInputTensor) -> bytes:
    """A tensor's typed `contents` as the raw bytes Triton's binary format gives it."""
    field = _CONTENTS.get(inp.datatype)
    if field is None:
        raise BinaryProtocolError(
            f"input {inp.name!r}: datatype {inp.datatype!r} has no typed contents field; send it "
            "in raw_input_contents",
            field=f"{inp.name}.datatype",
        )
    values = getattr(inp.contents, field)
    if inp.datatype == "BYTES":
        return binary.encode_bytes_elements(list(values))
    dtype = binary.DTYPES[inp.datatype]
    if dtype.kind in "iu":  # a value outside the datatype's range must not wrap around
        info = np.iinfo(dtype)
        if any(not info.min <= v <= info.max for v in values):
            raise BinaryProtocolError(
                f"input {inp.name!r}: a value is outside the range of {inp.datatype}",
                field=f"{inp.name}.contents",
            )
    return np.asarray(values, dtype=dtype).tobytes()


def set_parameter(target: pb.InferParameter, value: Parameter) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = value


def response(
    model: str,
    version: str,
    rid: str,
    outputs: list[tuple[str, str, np.ndarray]],
    params: dict[str, Parameter] | None = None,
) -> pb.ModelInferResponse:
    """A response with `outputs` (name, datatype, array) in `raw_output_contents`, as Triton
    answers (tritonclient's `as_numpy` reads either form)."""
    out = pb.ModelInferResponse(model_name=model, model_version=version, id=rid)
    for name, datatype, arr in outputs:
        out.outputs.add(name=name, datatype=datatype, shape=list(arr.shape))
        out.raw_output_contents.append(binary.encode_output(arr, datatype))
    for k, v in (params or {}).items():
        set_parameter(out.parameters[k], v)
    return out
