"""How a session and an idempotency record are written in Redis (`redis_store.py`).

A session is two hash fields: `st`, the portable state blob (`blob.encode_state`: model,
sha256, version, pending text, tokens seen, the state rows and logits), and `m`, a small JSON
meta (created_at, the idle TTL, the owner, and the graph, `<model>/<sha256>`, readable without
the blob: `RedisStore.count_graph`). An idempotency record is one hash field,
`"<expires_at ms>|<JSON {fingerprint, result}>"`.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from service.sessions.blob import StateBlob, decode_state, encode_state
from service.sessions.record import IdempotencyRecord, SessionRecord
from service.sessions.redis_scripts import ms


def encode_record(rec: SessionRecord) -> tuple[bytes, str]:
    """(the state blob, the meta JSON) of `rec`."""
    blob = StateBlob.of(rec)
    names = [f"s{i}" for i in range(len(rec.states))]  # the store keeps order, not names
    meta = json.dumps(
        # the graph, readable without the state blob (`count_graph`)
        {
            "created_at": rec.created_at,
            "ttl_s": rec.ttl_s,
            "owner": rec.owner,
            "graph": f"{rec.model}/{rec.model_sha256}",
        },
        separators=(",", ":"),
    )
    return encode_state(blob, names), meta


def decode_record(session_id: str, st: bytes, meta: bytes, now_ms: int) -> SessionRecord:
    """The record stored as (`st`, `meta`), its expiry an idle TTL from `now_ms` (Redis's
    clock, as the script that read it refreshed the TTL)."""
    b = decode_state(st)
    m = json.loads(meta)
    ttl_s = float(m["ttl_s"])
    return SessionRecord(
        id=session_id,
        model=b.model,
        model_sha256=b.model_sha256,
        version=b.version,
        states=tuple(b.states),
        pending=b.pending,
        logits=b.logits,
        created_at=float(m["created_at"]),
        ttl_s=ttl_s,
        expires_at=now_ms / 1000 + ttl_s,
        owner=m["owner"],
        tokens_seen=b.tokens_seen,
    )


def encode_idempotent(rec: IdempotencyRecord, now: float) -> tuple[bytes, int]:
    """The stored value ("<expires_at ms>|<JSON>") and the TTL (ms) the record still has."""
    body = json.dumps(
        {"fingerprint": rec.fingerprint, "result": rec.result},
        separators=(",", ":"),
        default=_jsonable,
    )
    return f"{round(rec.expires_at * 1000)}|{body}".encode(), ms(rec.expires_at - now)


def decode_idempotent(raw: bytes | str, now: float) -> IdempotencyRecord | None:
    """The record stored as `raw`, or None once it has expired."""
    exp_ms, body = (raw.encode() if isinstance(raw, str) else raw).split(b"|", 1)
    expires_at = int(exp_ms) / 1000
    if expires_at <= now:
        return None
    d = json.loads(body)
    return IdempotencyRecord(d["fingerprint"], d["result"], expires_at)


def _jsonable(o: object) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serializable")
