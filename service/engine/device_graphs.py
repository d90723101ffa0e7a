"""Two one-node ONNX graphs, Gather and Concat along a batch axis, that move rows of a batch's
state where it lives (on the GPU, say) without a trip through the host.

onnxruntime's Python API can bind a whole tensor on a device but cannot copy part of one; these
graphs, run on the model's own execution provider, do. They are encoded here by hand (a dozen
protobuf fields) so that the serving image needs no `onnx` package; the tests check them against
numpy on every state dtype and axis.
"""

from __future__ import annotations

from typing import Literal

# onnx.TensorProto.DataType
ELEM_TYPES = {"float32": 1, "int64": 7, "float16": 10}
_IR_VERSION = 8
_OPSET = 17
_ATTR_INT = 2  # onnx.AttributeProto.AttributeType.INT


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _msg(field: int, body: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(body)) + body


def _str(field: int, text: str) -> bytes:
    return _msg(field, text.encode())


def _tensor(name: str, elem: int) -> bytes:
    """ValueInfoProto{name, type: TypeProto{tensor_type{elem_type}}}: any shape."""
    return _str(1, name) + _msg(2, _msg(1, _int(1, elem)))


def graph(op: Literal["Gather", "Concat"], dtype: str, axis: int) -> bytes:
    """A serialized ModelProto: Gather(x, idx int64) -> y, or Concat(a, b) -> y, on `axis`."""
    elem = ELEM_TYPES[dtype]
    inputs = (
        [("x", elem), ("idx", ELEM_TYPES["int64"])]
        if op == "Gather"
        else [("a", elem), ("b", elem)]
    )
    attr = _str(1, "axis") + _int(3, axis) + _int(20, _ATTR_INT)
    node = b"".join(_str(1, n) for n, _ in inputs) + _str(2, "y") + _str(4, op) + _msg(5, attr)
    body = _msg(1, node) + _str(2, f"rnnserve_{op.lower()}")
    body += b"".join(_msg(11, _tensor(n, e)) for n, e in inputs) + _msg(12, _tensor("y", elem))
    opset = _str(1, "") + _int(2, _OPSET)
    return _int(1, _IR_VERSION) + _str(2, "rnnserve") + _msg(7, body) + _msg(8, opset)
