"""How the Redis store writes a session and an idempotency record (`redis_codec.py`): what is read
back is what was written, bit for bit, with no Redis in the way."""

from __future__ import annotations

import json

import numpy as np

from service.sessions.record import IdempotencyRecord
from service.sessions.redis_codec import (
    decode_idempotent,
    decode_record,
    encode_idempotent,
    encode_record,
)
from tests.service.redis_server import rec


def test_a_record_reads_back_exactly_its_expiry_an_idle_ttl_from_redis_clock() -> None:
    r = rec("s1", ttl=45.0, version=3, fill=0.25)
    st, meta = encode_record(r)
    assert json.loads(meta)["graph"] == f"{r.model}/{r.model_sha256}"  # readable without st
    back = decode_record("s1", st, meta.encode(), now_ms=1_700_000_000_000)
    assert back.expires_at == 1_700_000_000 + 45.0
    for name in ("id", "model", "model_sha256", "version", "pending", "created_at", "ttl_s"):
        assert getattr(back, name) == getattr(r, name), name
    assert (back.owner, back.tokens_seen) == (r.owner, r.tokens_seen)
    assert len(back.states) == len(r.states)
    for got, want in zip(back.states, r.states, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes()
    assert back.logits is not None and r.logits is not None
    assert back.logits.tobytes() == r.logits.tobytes()


def test_a_record_before_any_token_has_no_logits() -> None:
    r = rec("s2").replace(logits=None)
    st, meta = encode_record(r)
    assert decode_record("s2", st, meta.encode(), now_ms=0).logits is None


def test_an_idempotent_result_with_numpy_values_reads_back_until_it_expires() -> None:
    result = {"version": np.int64(4), "probs": np.array([0.25, 0.75], np.float32), "ok": True}
    stored = IdempotencyRecord("fp", result, expires_at=1000.0)
    raw, ttl_ms = encode_idempotent(stored, now=990.0)
    assert ttl_ms == 10_000
    back = decode_idempotent(raw, now=999.0)
    assert back == IdempotencyRecord(
        "fp", {"version": 4, "probs": [0.25, 0.75], "ok": True}, 1000.0
    )
    assert decode_idempotent(raw.decode(), now=999.0) == back  # (a client that decodes replies)
    assert decode_idempotent(raw, now=1000.0) is None
