"""gRPC tensors read as HTTP reads v2 bodies: typed contents and raw bytes give the same request."""

from __future__ import annotations

import numpy as np
import pytest

from service.api.grpc import inference_pb2 as pb
from service.api.grpc import tensors
from service.api.v2 import binary
from service.api.v2.binary import BinaryProtocolError

CASES = [
    ("BOOL", "bool_contents", [True, False], np.bool_),
    ("UINT8", "uint_contents", [0, 255], np.uint8),
    ("UINT16", "uint_contents", [1, 65535], np.uint16),
    ("UINT32", "uint_contents", [1, 2**32 - 1], np.uint32),
    ("UINT64", "uint64_contents", [1, 2**64 - 1], np.uint64),
    ("INT8", "int_contents", [-128, 127], np.int8),
    ("INT16", "int_contents", [-1, 2], np.int16),
    ("INT32", "int_contents", [-(2**31), 5], np.int32),
    ("INT64", "int64_contents", [-(2**63), 9], np.int64),
    ("FP32", "fp32_contents", [0.5, -1.25], np.float32),
    ("FP64", "fp64_contents", [0.1, 2.0], np.float64),
]


@pytest.mark.parametrize(("datatype", "field", "values", "dtype"), CASES)
def test_typed_contents_equal_raw_bytes(
    datatype: str, field: str, values: list[object], dtype: type
) -> None:
    typed = pb.ModelInferRequest(model_name="m")
    t = typed.inputs.add(name="X", datatype=datatype, shape=[2])
    getattr(t.contents, field).extend(values)
    raw = pb.ModelInferRequest(
        model_name="m", raw_input_contents=[np.array(values, dtype).tobytes()]
    )
    raw.inputs.add(name="X", datatype=datatype, shape=[2])
    (a, rest_a), (b, rest_b) = tensors.request(typed), tensors.request(raw)
    assert rest_a == rest_b and a == b
    assert a.inputs[0].parameters == {"binary_data_size": len(rest_a)}
    np.testing.assert_array_equal(binary.decode_raw("X", datatype, [2], rest_a), values)


def test_bytes_contents_and_parameters() -> None:
    msg = pb.ModelInferRequest(model_name="m", id="7")
    t = msg.inputs.add(name="TEXT", datatype="BYTES", shape=[2])
    t.contents.bytes_contents.extend([b"ab", b""])
    msg.parameters["sequence_id"].uint64_param = 2**64 - 1
    msg.parameters["sequence_start"].bool_param = True
    msg.parameters["priority"].double_param = 0.5
    msg.parameters["triton_enable_empty_final_response"].bool_param = True
    req, rest = tensors.request(msg, skip=frozenset({"triton_enable_empty_final_response"}))
    assert req.id == "7"
    assert req.parameters == {"sequence_id": 2**64 - 1, "sequence_start": True, "priority": 0.5}
    assert binary.decode_raw("TEXT", "BYTES", [2], rest).tolist() == [b"ab", b""]


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda m: m.inputs.add(name="X", datatype="INT64", shape=[1]), "X"),  # no data at all
        (
            lambda m: m.inputs.add(name="X", datatype="FP16", shape=[1]).contents.SetInParent(),
            "X.datatype",
        ),  # FP16 has no typed field
        (
            lambda m: m.inputs.add(
                name="X", datatype="INT8", shape=[1]
            ).contents.int_contents.append(300),
            "X.contents",
        ),  # would wrap around
        (
            lambda m: m.raw_input_contents.extend([b"a", b"b"]) or m.inputs.add(name="X"),
            "raw_input_contents",
        ),  # one input, two raw tensors
        (lambda m: m.parameters["p"].SetInParent(), "p"),  # a parameter without a value
    ],
)
def test_malformed_tensors_name_the_field(build: object, field: str) -> None:
    msg = pb.ModelInferRequest(model_name="m")
    build(msg)  # type: ignore[operator]
    with pytest.raises(BinaryProtocolError) as e:
        tensors.request(msg)
    assert e.value.field == field and e.value.status == 400


def test_caps_before_reading() -> None:
    msg = pb.ModelInferRequest(model_name="m")
    for i in range(65):
        msg.inputs.add(name=f"X{i}")
    with pytest.raises(BinaryProtocolError, match="at most 64"):
        tensors.request(msg)
    many = pb.ModelInferRequest(model_name="m")
    for i in range(65):
        many.parameters[f"p{i}"].bool_param = True
    with pytest.raises(BinaryProtocolError, match="at most 64 parameters"):
        tensors.request(many)


def test_response_outputs_are_raw() -> None:
    probs = np.array([[0.25, 0.75]], np.float32)
    label = np.array([b"pos"], dtype=object)
    out = tensors.response(
        "m",
        "1",
        "r",
        [("PROBS", "FP32", probs), ("LABEL", "BYTES", label)],
        {"finish_reason": "stop", "n": 3, "final": True, "t": 0.5},
    )
    assert [o.name for o in out.outputs] == ["PROBS", "LABEL"]
    assert list(out.outputs[0].shape) == [1, 2]
    np.testing.assert_array_equal(
        np.frombuffer(out.raw_output_contents[0], np.float32), [0.25, 0.75]
    )
    assert out.raw_output_contents[1] == binary.encode_bytes_elements([b"pos"])
    assert out.parameters["n"].int64_param == 3 and out.parameters["final"].bool_param
    assert out.parameters["t"].double_param == 0.5
