"""The portable state blob: a session's state as compact, checksummed bytes.

    b"RNNSTATE" | u16 format | u32 header length | header (JSON) | raw arrays | sha256(all before)

The header names the model (sha256 of its graph), the version, the pending text and each array's
dtype and shape; the arrays follow as raw little-endian bytes in header order. The API carries it
base64-encoded; the Redis store may keep the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from service.errors import InvalidState

if TYPE_CHECKING:
    from service.sessions.record import SessionRecord

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

    @classmethod
    def of(cls, rec: SessionRecord) -> StateBlob:
        """What of a session the blob carries: its model, version, text and state."""
        states = list(rec.states)
        return cls(
            rec.model,
            rec.model_sha256,
            rec.version,
            rec.pending,
            rec.tokens_seen,
            states,
            rec.logits,
        )


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


# Bounds on an untrusted header (a blob is client input on import): every field is checked for
# type and range before anything is built from it, so no value can overflow, recurse or allocate.
MAX_HEADER_BYTES = 64 * 1024
MAX_ARRAYS = 16
MAX_DIMS = 8
MAX_INT = 2**63 - 1  # version and tokens_seen are int64 wherever they are stored


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
    if hlen > MAX_HEADER_BYTES or start + hlen > len(body):
        raise bad(f"header length {hlen} (at most {MAX_HEADER_BYTES} bytes, within the blob)")
    try:
        header = json.loads(body[start : start + hlen], parse_constant=_no_constant)
    except RecursionError:
        raise bad("header nested too deeply") from None
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError included
        raise bad(f"header is not JSON ({e})") from None
    except _Bad as e:  # NaN / Infinity, which standard JSON does not have
        raise bad(str(e)) from None
    try:
        return _parse(header, body, start + hlen)
    except _Bad as e:
        raise bad(str(e)) from None


class _Bad(Exception):
    pass


def _no_constant(name: str) -> object:
    raise _Bad(f"{name} is not a number")


def _field(obj: object, key: str, kind: type, where: str = "header") -> object:
    if not isinstance(obj, dict) or key not in obj:
        raise _Bad(f"{where}.{key} is missing")
    value = obj[key]
    # bool is an int in Python; a JSON true is never a count or a version
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _Bad(f"{where}.{key} must be {kind.__name__}, not {type(value).__name__}")
    return value


def _count(obj: object, key: str, where: str = "header", top: int = MAX_INT) -> int:
    return _in_range(_field(obj, key, int, where), f"{where}.{key}", top)


def _in_range(value: object, what: str, top: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Bad(f"{what} must be int, not {type(value).__name__}")
    if not 0 <= value <= top:
        raise _Bad(f"{what} must be in [0, {top}], not {value}")
    return value


def _parse(header: object, body: bytes, offset: int) -> StateBlob:
    model, sha, pending = (
        str(_field(header, k, str)) for k in ("model", "model_sha256", "pending")
    )
    version = _count(header, "version")
    # blobs written before tokens_seen existed (a Redis store's older records) have none
    has_seen = isinstance(header, dict) and "tokens_seen" in header
    tokens_seen = _count(header, "tokens_seen") if has_seen else 0
    specs = _field(header, "arrays", list)
    assert isinstance(specs, list)
    if len(specs) > MAX_ARRAYS:
        raise _Bad(f"{len(specs)} arrays (at most {MAX_ARRAYS})")
    arrays: dict[str, np.ndarray] = {}
    order: list[str] = []
    for i, spec in enumerate(specs):
        where = f"header.arrays[{i}]"
        name = str(_field(spec, "name", str, where))
        dtype_name = _field(spec, "dtype", str, where)
        if dtype_name not in _DTYPES or name in arrays:
            raise _Bad(f"{where}: dtype {dtype_name!r} or a repeated name {name!r}")
        dims = _field(spec, "shape", list, where)
        assert isinstance(dims, list)
        if len(dims) > MAX_DIMS:
            raise _Bad(f"{where}.shape has {len(dims)} dimensions (at most {MAX_DIMS})")
        shape = tuple(_in_range(d, f"{where}.shape[{j}]", len(body)) for j, d in enumerate(dims))
        dtype = np.dtype(str(dtype_name)).newbyteorder("<")
        n = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
        if offset + n > len(body):
            raise _Bad("arrays run past the end")
        arrays[name] = (
            np.frombuffer(body, dtype, count=n // dtype.itemsize, offset=offset)
            .reshape(shape)
            .astype(dtype.newbyteorder("="))
        )
        order.append(name)
        offset += n
    if offset != len(body):
        raise _Bad("trailing bytes")
    logits = arrays.pop(_LOGITS, None)
    return StateBlob(
        model=model,
        model_sha256=sha,
        version=version,
        pending=pending,
        tokens_seen=tokens_seen,
        states=[arrays[n] for n in order if n != _LOGITS],
        logits=logits,
    )
