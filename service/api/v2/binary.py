"""Tensor codec of the Open Inference Protocol v2 and Triton's binary-tensor extension.

A v2 request body is a JSON header, optionally followed by raw tensor bytes:

    Inference-Header-Content-Length: N
    body = <N bytes of JSON> <input 0 bytes> <input 1 bytes> ...

Each input sent in binary carries `parameters.binary_data_size` (its byte count) instead of
`data`; the raw parts follow the JSON in input order. Numeric tensors are raw little-endian
row-major arrays; a `BYTES` tensor is each element as a 4-byte little-endian length plus the
bytes. Responses use the same layout for outputs asked for in binary.

Pure functions on bytes and numpy arrays; every malformed input is a `ServiceError` (400).
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.errors import ServiceError

HEADER_LENGTH = "Inference-Header-Content-Length"

# v2 datatype -> numpy dtype (little-endian on the wire). BF16 has no numpy dtype: refused.
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}
_LEN = struct.Struct("<I")


class BinaryProtocolError(ServiceError):
    """A malformed v2 body: bad header length, sizes that do not add up, bad tensor data."""

    status, code = 400, "invalid_tensor"


def decompress(body: bytes, encoding: str | None, limit: int | None = None) -> bytes:
    """Undo a request's `Content-Encoding` (tritonclient may send gzip or deflate), producing
    at most `limit` bytes (a small compressed body must not expand without bound: 413)."""
    enc = (encoding or "identity").strip().lower()
    if enc == "identity":
        return body
    if enc not in ("gzip", "deflate"):
        raise BinaryProtocolError(f"unsupported Content-Encoding {encoding!r}", status=415)
    d = zlib.decompressobj(16 + zlib.MAX_WBITS if enc == "gzip" else zlib.MAX_WBITS)
    try:
        out = d.decompress(body, 0 if limit is None else limit + 1)
    except zlib.error as e:
        raise BinaryProtocolError(f"body is not valid {enc} data: {e}") from None
    if limit is not None and len(out) > limit:
        raise BinaryProtocolError(
            f"the {enc} body expands past the limit of {limit} bytes (RNNSERVE_MAX_BODY_BYTES)",
            status=413,
            code="payload_too_large",
        )
    if not d.eof:
        raise BinaryProtocolError(f"body is not valid {enc} data: truncated")
    return out


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """(the JSON header as a dict, the binary part after it)."""
    if header_length is None:
        n = len(body)
    else:
        try:
            n = int(header_length.strip())
        except ValueError:
            n = -1
        if not 0 <= n <= len(body):
            raise BinaryProtocolError(
                f"{HEADER_LENGTH} must be an integer between 0 and the body size ({len(body)}), "
                f"got {header_length!r}",
                field=HEADER_LENGTH,
            )
    try:
        header = json.loads(body[:n])
    # ValueError: JSONDecodeError, UnicodeDecodeError, and an integer past Python's 4,300-digit
    # conversion limit (which is not a JSONDecodeError)
    except (ValueError, RecursionError) as e:
        where = f"the first {n} bytes (the JSON header)" if header_length is not None else "body"
        why = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise BinaryProtocolError(f"{where} is not valid JSON: {why}", field="body") from None
    if not isinstance(header, dict):
        raise BinaryProtocolError("the request must be a JSON object", field="body")
    return header, body[n:]


def take_binary(rest: bytes, sizes: Sequence[tuple[str, int | None]]) -> dict[str, bytes]:
    """Cut the binary part into each binary input's bytes, in order; the sizes must add up."""
    out: dict[str, bytes] = {}
    offset = 0
    for name, size in sizes:
        if size is None:
            continue
        if offset + size > len(rest):
            raise BinaryProtocolError(
                f"input {name!r}: binary_data_size {size} runs past the end of the body "
                f"({len(rest) - offset} bytes left)",
                field=f"{name}.binary_data_size",
            )
        out[name] = rest[offset : offset + size]
        offset += size
    if offset != len(rest):
        raise BinaryProtocolError(
            f"{len(rest) - offset} bytes after the JSON header belong to no input (the "
            "binary_data_size values add up to less than the binary part)",
            field="binary_data_size",
        )
    return out


# No body holds more elements than this; a shape that names more (a zero dimension beside
# huge ones holds none, yet numpy cannot even describe it) is refused before any array is made.
MAX_SHAPE_ELEMENTS = 1 << 32


def element_count(name: str, shape: Sequence[int]) -> int:
    n, extent = 1, 1
    for d in shape:
        if d < 0:
            raise BinaryProtocolError(f"input {name!r}: negative dimension in shape {list(shape)}")
        n *= d
        extent *= max(d, 1)
        if extent > MAX_SHAPE_ELEMENTS:
            raise BinaryProtocolError(
                f"input {name!r}: shape {list(shape)} is too large", field=f"{name}.shape"
            )
    return n


def dtype_of(name: str, datatype: str) -> np.dtype[Any]:
    try:
        return DTYPES[datatype]
    except KeyError:
        known = ", ".join(DTYPES)
        raise BinaryProtocolError(
            f"input {name!r}: datatype {datatype!r} is not supported (one of {known})",
            field=f"{name}.datatype",
        ) from None


def decode_bytes_elements(name: str, raw: bytes) -> list[bytes]:
    """`<u32 length><bytes>` repeated -> the elements."""
    items: list[bytes] = []
    i = 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise BinaryProtocolError(
                f"input {name!r}: truncated BYTES element length at offset {i}"
            )
        (n,) = _LEN.unpack_from(raw, i)
        i += 4
        if i + n > len(raw):
            raise BinaryProtocolError(
                f"input {name!r}: BYTES element of {n} bytes at offset {i - 4} runs past the end"
            )
        items.append(raw[i : i + n])
        i += n
    return items


def encode_bytes_elements(items: Sequence[bytes]) -> bytes:
    return b"".join(_LEN.pack(len(b)) + b for b in items)


def decode_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes) -> np.ndarray:
    """A binary tensor -> a numpy array of `shape` (BYTES: dtype object holding `bytes`)."""
    dtype = dtype_of(name, datatype)
    count = element_count(name, shape)
    if datatype == "BYTES":
        items = decode_bytes_elements(name, raw)
        if len(items) != count:
            raise BinaryProtocolError(
                f"input {name!r}: {len(items)} BYTES elements for shape {list(shape)} "
                f"({count} expected)"
            )
        arr = np.empty(count, dtype=object)
        arr[:] = items
        return arr.reshape(tuple(shape))
    if len(raw) != count * dtype.itemsize:
        raise BinaryProtocolError(
            f"input {name!r}: {len(raw)} bytes for {datatype} shape {list(shape)} "
            f"({count * dtype.itemsize} expected)",
            field=f"{name}.binary_data_size",
        )
    return np.frombuffer(raw, dtype=dtype).reshape(tuple(shape))


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    for x in data:
        out.extend(_flatten(x) if isinstance(x, list) else [x])
    return out


def _json_ok(datatype: str, x: Any) -> bool:
    if datatype == "BYTES":
        return isinstance(x, str)
    if datatype == "BOOL":
        return isinstance(x, bool)
    if isinstance(x, bool):
        return False
    if datatype.startswith(("INT", "UINT")):
        return isinstance(x, int)
    return isinstance(x, int | float)


def decode_json(name: str, datatype: str, shape: Sequence[int], data: Any) -> np.ndarray:
    """A tensor's JSON `data` (flat or nested, row-major) -> a numpy array of `shape`."""
    dtype = dtype_of(name, datatype)
    count = element_count(name, shape)
    flat = _flatten(data)
    if len(flat) != count:
        raise BinaryProtocolError(
            f"input {name!r}: {len(flat)} data elements for shape {list(shape)} ({count} expected)",
            field=f"{name}.data",
        )
    for i, x in enumerate(flat):
        if not _json_ok(datatype, x):
            raise BinaryProtocolError(
                f"input {name!r}: element {i} ({x!r}) is not a valid {datatype} value",
                field=f"{name}.data",
            )
    if datatype == "BYTES":
        arr = np.empty(count, dtype=object)
        arr[:] = flat
        return arr.reshape(tuple(shape))
    try:
        return np.array(flat, dtype=dtype).reshape(tuple(shape))
    except OverflowError:
        raise BinaryProtocolError(
            f"input {name!r}: a value does not fit {datatype}", field=f"{name}.data"
        ) from None


def encode_output(arr: np.ndarray, datatype: str) -> bytes:
    """An output array -> its binary representation."""
    if datatype == "BYTES":
        return encode_bytes_elements(
            [x if isinstance(x, bytes) else str(x).encode() for x in arr.ravel().tolist()]
        )
    return np.ascontiguousarray(arr, dtype=DTYPES[datatype]).tobytes()


def json_data(arr: np.ndarray, datatype: str) -> list[Any]:
    """An output array -> its flat JSON `data` list."""
    items: list[Any] = arr.ravel().tolist()
    if datatype == "BYTES":
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in items]
    return items


def build_body(header: dict[str, Any], binary_parts: Sequence[bytes]) -> tuple[bytes, int | None]:
    """(body, header length): the JSON header plus the binary parts; length None if JSON only."""
    head = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()
    if not binary_parts:
        return head, None
    return head + b"".join(binary_parts), len(head)
