"""What a session is: a model version bound to its recurrent state, plus lifecycle fields."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from service.engine.registry import LoadedModel


@dataclass(frozen=True)
class SessionRecord:
    """An immutable snapshot; a change is a new record committed with the next `version`.

    `states` hold ONE row each (batch axis of size 1, as the manifest describes the tensor);
    `pending` is tokenizer text held back (an unfinished word); `logits` (K,) are the model's
    output after the last committed token (None before any token), so a generation can start
    right after a feed without re-running the model.
    """

    id: str
    model: str
    model_sha256: str
    version: int
    states: tuple[np.ndarray, ...]
    pending: str
    logits: np.ndarray | None
    created_at: float
    ttl_s: float
    expires_at: float
    owner: str | None = None  # the API key scope (placeholder until keys exist)
    tokens_seen: int = 0

    def replace(self, **changes: Any) -> SessionRecord:
        """A copy with `changes` (as `dataclasses.replace`, which cost 5-8 us a call on the feed
        path: it re-runs `__init__` through keyword arguments)."""
        if not changes.keys() <= _FIELDS:  # (a comparison: no set built for every feed)
            unknown = sorted(changes.keys() - _FIELDS)
            raise TypeError(f"SessionRecord has no field {unknown[0]!r}")
        new = object.__new__(SessionRecord)
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)
        return new


_FIELDS = frozenset(f.name for f in dataclasses.fields(SessionRecord))


@dataclass(frozen=True)
class IdempotencyRecord:
    """The stored outcome of a request made with an `Idempotency-Key`."""

    fingerprint: str  # hash of (operation, request body): a reused key with another body is refused
    result: dict[str, Any]
    expires_at: float


def fresh_record(
    m: LoadedModel, sid: str, owner: str | None, now: float, ttl_s: float
) -> SessionRecord:
    """A new session (or v2 sequence) stored as `sid`: version 0, the model's initial state and
    no text seen yet."""
    return SessionRecord(
        id=sid,
        model=m.name,
        model_sha256=m.sha256,
        version=0,
        states=tuple(m.manifest.init_states(1)),
        pending="",
        logits=None,
        created_at=now,
        ttl_s=ttl_s,
        expires_at=now + ttl_s,
        owner=owner,
    )
