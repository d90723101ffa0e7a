from __future__ import annotations

import numpy as np
import pytest

from service.engine.sessions.blob import StateBlob, decode_state, encode_state
from service.errors import InvalidState


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
