"""Session records, the store interface, the in-memory store and the state blob."""

from __future__ import annotations

from service.sessions.blob import decode_state, encode_state
from service.sessions.memory import MemoryStore
from service.sessions.record import IdempotencyRecord, SessionRecord
from service.sessions.store import Clock, SessionStore

__all__ = [
    "Clock",
    "IdempotencyRecord",
    "MemoryStore",
    "SessionRecord",
    "SessionStore",
    "decode_state",
    "encode_state",
]
