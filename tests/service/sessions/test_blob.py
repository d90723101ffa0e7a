from __future__ import annotations

import numpy as np
import pytest

from service.errors import InvalidState
from service.sessions.blob import StateBlob, decode_state, encode_state


def _blob() -> StateBlob:
    rng = np.random.default_rng(0)
    states = [
        rng.standard_normal((2, 1, 4)).astype(np.float32),
        np.full((1, 1, 3), -np.inf, np.float32),
    ]
    return StateBlob(
        "m", "ab" * 32, 7, "unfinis", 12, states, rng.standard_normal(5).astype(np.float32)
    )


def test_round_trip() -> None:
    b = _blob()
    back = decode_state(encode_state(b, ["h", "pool"]))
    assert (back.model, back.model_sha256, back.version, back.pending, back.tokens_seen) == (
        "m",
        "ab" * 32,
        7,
        "unfinis",
        12,
    )
    for x, y in zip(back.states, b.states, strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y)
    assert back.logits is not None and b.logits is not None
    assert np.array_equal(back.logits, b.logits)


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "empty"])
def test_damage_is_rejected(damage: str) -> None:
    data = bytearray(encode_state(_blob(), ["h", "pool"]))
    if damage == "flip":
        data[40] ^= 1
    elif damage == "truncate":
        data = data[:-5]
    elif damage == "garbage":
        data = bytearray(b"hello world" * 10)
    else:
        data = bytearray()
    with pytest.raises(InvalidState) as e:
        decode_state(bytes(data))
    assert e.value.field == "state"


def _craft(header: bytes, arrays: bytes = b"") -> bytes:
    """A blob with any header, correctly framed and checksummed: what a hostile client can send."""
    import hashlib

    from service.sessions.blob import _FIXED, FORMAT, MAGIC

    body = MAGIC + _FIXED.pack(FORMAT, len(header)) + header + arrays
    return body + hashlib.sha256(body).digest()


def _header(**change: object) -> bytes:
    import json

    h: dict[str, object] = {
        "model": "m",
        "model_sha256": "ab" * 32,
        "version": 3,
        "pending": "",
        "tokens_seen": 4,
        "arrays": [{"name": "h", "dtype": "float32", "shape": [1, 1, 2]}],
    }
    h.update(change)
    return json.dumps(h).encode()


ARR = np.zeros(2, np.float32).tobytes()


def test_a_crafted_valid_header_decodes() -> None:
    b = decode_state(_craft(_header(), ARR))
    assert (b.version, b.tokens_seen) == (3, 4) and b.states[0].shape == (1, 1, 2)


@pytest.mark.parametrize(
    ("header", "says"),
    [
        (_header(version=-5), "header.version must be in"),
        (_header(version=10**30), "header.version must be in"),
        (_header(version="7"), "header.version must be int"),
        (_header(version=7.9), "header.version must be int"),
        (_header(version=True), "header.version must be int"),
        (_header(tokens_seen=-100), "header.tokens_seen must be in"),
        (_header(pending={"a": 1}), "header.pending must be str"),
        (_header(model=None), "header.model must be str"),
        (_header().replace(b'"version": 3', b'"version": Infinity'), "Infinity is not a number"),
        (_header().replace(b'"version": 3', b'"version": NaN'), "NaN is not a number"),
        (_header().replace(b'"tokens_seen": 4', b'"tokens_seen": 1e400'), "must be int"),
        (_header(arrays=[{"name": "h", "dtype": "float32", "shape": [1, 1, 1e400]}]), "Infinity"),
        (
            _header(arrays=[{"name": "h", "dtype": "float32", "shape": [1.0, 1, 2]}]),
            "shape[0] must be int",
        ),
        (_header(arrays=[{"name": "h", "dtype": "float32", "shape": [10**30]}]), "shape[0]"),
        (_header(arrays=[{"name": "h", "dtype": "float32", "shape": [-2, -1]}]), "shape[0]"),
        (_header(arrays=[{"name": "h", "dtype": "float64", "shape": [2]}]), "dtype"),
        (_header(arrays=[{"name": "h", "dtype": "float32", "shape": [1]}] * 17), "arrays"),
        (_header(arrays=[{"name": "h", "dtype": "float32", "shape": [1] * 9}]), "dimensions"),
        (_header(arrays="h"), "header.arrays must be list"),
        (_header(arrays=[7]), "header.arrays[0].name is missing"),
        (b"[" * 100_000 + b"]" * 100_000, "header length"),
        (b"[" * 30_000 + b"]" * 30_000, "nested too deeply"),
        (b"[1, 2]", "header.model is missing"),
        (b"\xff\xfe", "not JSON"),
    ],
)
def test_crafted_headers_are_refused_naming_the_field(header: bytes, says: str) -> None:
    with pytest.raises(InvalidState) as e:
        decode_state(_craft(header, ARR))
    assert e.value.field == "state" and says in e.value.message, e.value.message


def test_blobs_from_before_tokens_seen_still_decode() -> None:
    import json

    h = json.loads(_header())
    del h["tokens_seen"]
    assert decode_state(_craft(json.dumps(h).encode(), ARR)).tokens_seen == 0
