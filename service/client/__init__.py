"""A Python client for rnnserve's native API, needing only httpx.

    from service.client import Client

    with Client("http://127.0.0.1:8000") as c:
        c.predict("sentiment-lstm", ["a gripping film"])[0].label
        for tok in c.generate("char-lstm", "ROMEO:", max_tokens=50, stream=True):
            print(tok, end="")
        with c.session("sentiment-lstm") as s:
            s.feed("I expected to hate it, ")
            s.feed("but it won me over.").output

`AsyncClient` is the same API for asyncio. Errors are typed (`service.client.errors`); transient
failures are retried (`Retry`), with an Idempotency-Key on every state-changing call.
See docs/client.md.
"""

from __future__ import annotations

from service.client._core import SamplingArgs
from service.client._retry import Retry
from service.client.aio import AsyncClient, AsyncSession, AsyncTokenStream
from service.client.errors import (
    BadRequest,
    Conflict,
    EngineError,
    IdempotencyKeyReused,
    InvalidInput,
    InvalidJSON,
    InvalidState,
    ModelChanged,
    ModelNotFound,
    NotFound,
    Overloaded,
    RnnserveError,
    ServerError,
    SessionEvicted,
    SessionExists,
    SessionExpired,
    SessionGone,
    SessionLimit,
    SessionNotFound,
    ShuttingDown,
    StoreUnavailable,
    StreamInterrupted,
    StreamLimit,
    TransportError,
    Unavailable,
    UnknownCharacters,
    UnsupportedTask,
    VersionConflict,
)
from service.client.sync import Client, Session, TokenStream
from service.client.types import FeedResult, Generation, Model, Output, SessionInfo

__all__ = [
    "AsyncClient",
    "AsyncSession",
    "AsyncTokenStream",
    "BadRequest",
    "Client",
    "Conflict",
    "EngineError",
    "FeedResult",
    "Generation",
    "IdempotencyKeyReused",
    "InvalidInput",
    "InvalidJSON",
    "InvalidState",
    "Model",
    "ModelChanged",
    "ModelNotFound",
    "NotFound",
    "Output",
    "Overloaded",
    "Retry",
    "RnnserveError",
    "SamplingArgs",
    "ServerError",
    "Session",
    "SessionEvicted",
    "SessionExists",
    "SessionExpired",
    "SessionGone",
    "SessionInfo",
    "SessionLimit",
    "SessionNotFound",
    "ShuttingDown",
    "StoreUnavailable",
    "StreamInterrupted",
    "StreamLimit",
    "TokenStream",
    "TransportError",
    "Unavailable",
    "UnknownCharacters",
    "UnsupportedTask",
    "VersionConflict",
]
