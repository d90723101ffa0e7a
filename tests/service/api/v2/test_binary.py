"""The v2 tensor codec and request parameters, as pure functions (no server)."""

from __future__ import annotations

import gzip
import json
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from service.api.v2 import binary, protocol
from service.api.v2.binary import BinaryProtocolError


def test_bytes_elements_match_tritonclient() -> None:
    items = [b"", b"hello", "héllo".encode(), b"\x00\xff"]
    ours = binary.encode_bytes_elements(items)
    theirs = serialize_byte_tensor(np.array(items, dtype=object)).item()
    assert ours == theirs
    assert binary.decode_bytes_elements("T", ours) == items
    assert deserialize_bytes_tensor(ours).tolist() == items


@given(st.lists(st.binary(max_size=40), max_size=8))
def test_bytes_roundtrip(items: list[bytes]) -> None:
    raw = binary.encode_bytes_elements(items)
    arr = binary.decode_raw("T", "BYTES", [len(items)], raw)
    assert arr.tolist() == items


@pytest.mark.parametrize(
    ("datatype", "values"),
    [
        ("INT64", [[1, -2, 3], [4, 5, 2**62]]),
        ("INT32", [[1, 2, 3], [4, 5, 6]]),
        ("UINT8", [[0, 255, 1], [2, 3, 4]]),
        ("FP32", [[0.5, -1.25, 3.0], [1e-3, 2.0, 7.0]]),
        ("FP64", [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]),
        ("FP16", [[0.5, 1.0, 2.0], [4.0, 8.0, 16.0]]),
        ("BOOL", [[True, False, True], [False, False, True]]),
    ],
)
def test_numeric_binary_and_json_agree(datatype: str, values: list[list[object]]) -> None:
    ref = np.array(values, dtype=binary.DTYPES[datatype])
    from_raw = binary.decode_raw("X", datatype, [2, 3], ref.tobytes())
    from_json = binary.decode_json("X", datatype, [2, 3], values)
    flat_json = binary.decode_json("X", datatype, [2, 3], [v for row in values for v in row])
    np.testing.assert_array_equal(from_raw, ref)
    np.testing.assert_array_equal(from_json, ref)
    np.testing.assert_array_equal(flat_json, ref)
    assert binary.encode_output(ref, datatype) == ref.tobytes()
    assert binary.json_data(ref, datatype) == ref.ravel().tolist()


def test_split_body_and_take_binary() -> None:
    head = json.dumps({"inputs": []}).encode()
    body = head + b"abcdefg"
    header, rest = binary.split_body(body, str(len(head)))
    assert header == {"inputs": []}
    assert binary.take_binary(rest, [("A", 3), ("J", None), ("B", 4)]) == {
        "A": b"abc",
        "B": b"defg",
    }
    assert binary.split_body(head, None) == ({"inputs": []}, b"")


@pytest.mark.parametrize("value", ["abc", "-1", "100000", "1.5", ""])
def test_bad_header_length(value: str) -> None:
    with pytest.raises(BinaryProtocolError, match="Inference-Header-Content-Length") as e:
        binary.split_body(b'{"inputs": []}', value)
    assert e.value.status == 400


def test_header_length_cutting_json_is_a_clear_error() -> None:
    with pytest.raises(BinaryProtocolError, match="first 5 bytes"):
        binary.split_body(b'{"inputs": []}', "5")


def test_sizes_must_add_up() -> None:
    with pytest.raises(BinaryProtocolError, match="runs past the end"):
        binary.take_binary(b"abc", [("A", 4)])
    with pytest.raises(BinaryProtocolError, match="belong to no input"):
        binary.take_binary(b"abcd", [("A", 3)])


def test_malformed_tensors() -> None:
    with pytest.raises(BinaryProtocolError, match="truncated"):
        binary.decode_raw("T", "BYTES", [1], b"\x01\x00")
    with pytest.raises(BinaryProtocolError, match="runs past the end"):
        binary.decode_raw("T", "BYTES", [1], struct.pack("<I", 10) + b"abc")
    with pytest.raises(BinaryProtocolError, match="2 BYTES elements"):
        binary.decode_raw("T", "BYTES", [3], binary.encode_bytes_elements([b"a", b"b"]))
    with pytest.raises(BinaryProtocolError, match="expected"):
        binary.decode_raw("X", "INT64", [2], b"\x00" * 12)
    with pytest.raises(BinaryProtocolError, match="not supported"):
        binary.decode_raw("X", "BF16", [1], b"\x00\x00")
    with pytest.raises(BinaryProtocolError, match="3 data elements"):
        binary.decode_json("X", "INT64", [2], [1, 2, 3])
    with pytest.raises(BinaryProtocolError, match="not a valid INT64"):
        binary.decode_json("X", "INT64", [2], [1, 2.5])
    with pytest.raises(BinaryProtocolError, match="not a valid BYTES"):
        binary.decode_json("X", "BYTES", [1], [3])
    with pytest.raises(BinaryProtocolError, match="negative dimension"):
        binary.decode_json("X", "INT64", [-1], [1])
    with pytest.raises(BinaryProtocolError, match="does not fit"):
        binary.decode_json("X", "UINT8", [1], [300])


def test_decompress() -> None:
    body = b'{"inputs": []}'
    assert binary.decompress(gzip.compress(body), "gzip") == body
    assert binary.decompress(zlib.compress(body), "deflate") == body
    assert binary.decompress(body, None) == body
    with pytest.raises(BinaryProtocolError, match="not valid gzip"):
        binary.decompress(body, "gzip")
    with pytest.raises(BinaryProtocolError) as e:
        binary.decompress(body, "br")
    assert e.value.status == 415


def test_build_body() -> None:
    body, n = binary.build_body({"a": 1}, [b"xy", b"z"])
    assert n is not None and json.loads(body[:n]) == {"a": 1} and body[n:] == b"xyz"
    assert binary.build_body({"a": 1}, []) == (b'{"a":1}', None)


# -- request parameters ------------------------------------------------------------------------


def test_sequence_ids() -> None:
    seq = protocol.parse_sequence({"sequence_id": 42, "sequence_start": True})
    assert seq == protocol.Sequence("42", True, False, "uint64")
    seq = protocol.parse_sequence({"sequence_id": "user-7", "sequence_end": True})
    assert seq == protocol.Sequence("user-7", False, True, "string")
    assert protocol.parse_sequence({"sequence_id": 2**64 - 1}) is not None
    assert protocol.parse_sequence({}) is None
    assert protocol.parse_sequence({"sequence_id": 0}) is None  # Triton: 0 = no sequence


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"sequence_id": 2**64}, "uint64"),
        ({"sequence_id": -1}, "uint64"),
        ({"sequence_id": True}, "unsigned 64-bit integer or a string"),
        ({"sequence_id": 1.5}, "unsigned 64-bit integer or a string"),
        ({"sequence_id": "has space"}, "must match"),
        ({"sequence_start": True}, "need a non-zero sequence_id"),
        ({"sequence_id": 3, "sequence_end": "yes"}, "boolean"),
    ],
)
def test_bad_sequence_parameters(params: dict[str, protocol.Parameter], match: str) -> None:
    with pytest.raises(BinaryProtocolError, match=match):
        protocol.parse_sequence(params)


def test_unknown_request_parameters_are_refused() -> None:
    protocol.check_parameters({"sequence_id": 1, "priority": 0, "timeout": 10})
    with pytest.raises(BinaryProtocolError, match="temperature"):
        protocol.check_parameters({"temperature": 0.5})


def test_request_validation_names_the_field() -> None:
    with pytest.raises(BinaryProtocolError, match="inputs"):
        protocol.parse_request({"inputs": []})
    with pytest.raises(BinaryProtocolError, match=r"inputs\.0\.shape"):
        protocol.parse_request({"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": "x"}]})


def test_a_shape_too_large_to_describe_is_refused() -> None:
    # no elements (a zero dimension), yet more than numpy can describe: a 400, not a 500
    from service.api.v2.binary import BinaryProtocolError, decode_raw

    with pytest.raises(BinaryProtocolError, match="too large") as e:
        decode_raw("TEXT", "BYTES", [0, 102296001, 11270445505], b"")
    assert e.value.field == "TEXT.shape"
