"""The portable state blob: a session's state as compact, checksummed bytes.

    b"RNNSTATE" | u16 format | u32 header length | header (JSON) | raw arrays | sha256(all before)

The header names the model (sha256 of its graph), the version, the pending text and each array's
dtype and shape; the arrays follow as raw little-endian bytes in header order. The API carries it
base64-encoded; the Redis store may keep the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass

import numpy as np

from service.errors import InvalidState

MAGIC = b"RNNSTATE"
FORMAT = 1
_FIXED = struct.Struct("<HI")
_LOGITS = "__logits__"
_DTYPES = {"float32", "float16"}


@dataclass(frozen=True)
class StateBlob:
    model: str
    model_sha256: str
    version: int
    pending: str
    tokens_seen: int
    states: list[np.ndarray]
    logits: np.ndarray | None


def encode_state(blob: StateBlob, state_names: list[str]) -> bytes:
    arrays = list(zip(state_names, blob.states, strict=True))
    if blob.logits is not None:
        arrays.append((_LOGITS, blob.logits))
    header = {
        "model": blob.model,
        "model_sha256": blob.model_sha256,
        "version": blob.version,
        "pending": blob.pending,
        "tokens_seen": blob.tokens_seen,
        "arrays": [{"name": n, "dtype": str(a.dtype), "shape": list(a.shape)} for n, a in arrays],
    }
    hbytes = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    body = b"".join(
        [MAGIC, _FIXED.pack(FORMAT, len(hbytes)), hbytes]
        + [np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes() for _, a in arrays]
    )
    return body + hashlib.sha256(body).digest()


def decode_state(data: bytes) -> StateBlob:
    """Parse and verify a blob; any damage is `InvalidState` (422) naming the field `state`."""

    def bad(why: str) -> InvalidState:
        return InvalidState(f"state blob rejected: {why}", field="state")

    if len(data) < len(MAGIC) + _FIXED.size + 32 or not data.startswith(MAGIC):
        raise bad("not an rnnserve state blob")
    body, digest = data[:-32], data[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise bad("checksum mismatch (corrupted or truncated)")
    fmt, hlen = _FIXED.unpack_from(body, len(MAGIC))
    if fmt != FORMAT:
        raise bad(f"format {fmt} is not supported")
    start = len(MAGIC) + _FIXED.size
    try:
        header = json.loads(body[start : start + hlen])
        offset = start + hlen
        arrays: dict[str, np.ndarray] = {}
        order: list[str] = []
        for spec in header["arrays"]:
            if spec["dtype"] not in _DTYPES:
                raise ValueError(f"dtype {spec['dtype']!r}")
            dtype = np.dtype(spec["dtype"]).newbyteorder("<")
            shape = tuple(int(d) for d in spec["shape"])
            n = int(np.prod(shape)) * dtype.itemsize
            if offset + n > len(body):
                raise ValueError("arrays run past the end")
            arrays[spec["name"]] = (
                np.frombuffer(body, dtype, count=n // dtype.itemsize, offset=offset)
                .reshape(shape)
                .astype(dtype.newbyteorder("="))
            )
            order.append(spec["name"])
            offset += n
        if offset != len(body):
            raise ValueError("trailing bytes")
        logits = arrays.pop(_LOGITS, None)
        return StateBlob(
            model=str(header["model"]),
            model_sha256=str(header["model_sha256"]),
            version=int(header["version"]),
            pending=str(header["pending"]),
            tokens_seen=int(header.get("tokens_seen", 0)),
            states=[arrays[n] for n in order if n != _LOGITS],
            logits=logits,
        )
    except (ValueError, KeyError, TypeError) as e:
        raise bad(f"malformed header ({e})") from None
