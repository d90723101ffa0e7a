"""`TracedStore`: a session store whose record reads and writes are spans (`store.get`,
`store.commit`, ...), children of the request's span. Put in front of the store only when
tracing is on (`engine/startup.py`), so a server without tracing pays nothing for it."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager

from service import tracing
from service.sessions.record import IdempotencyRecord, SessionRecord
from service.sessions.store import SessionStore


class TracedStore:
    """`SessionStore` over `inner`, each record operation of a sampled request in a span."""

    def __init__(self, inner: SessionStore) -> None:
        self.inner = inner
        self._attrs = {"db.system.name": type(inner).__name__}

    async def create(self, record: SessionRecord) -> None:
        if tracing.capture() is None:
            return await self.inner.create(record)
        with tracing.span("store.create", self._attrs):
            await self.inner.create(record)

    async def get(self, session_id: str) -> SessionRecord:
        if tracing.capture() is None:
            return await self.inner.get(session_id)
        with tracing.span("store.get", self._attrs):
            return await self.inner.get(session_id)

    async def commit(
        self,
        record: SessionRecord,
        expected_version: int,
        idempotency: tuple[str, IdempotencyRecord] | None = None,
    ) -> SessionRecord:
        if tracing.capture() is None:
            return await self.inner.commit(record, expected_version, idempotency)
        with tracing.span("store.commit", {**self._attrs, "rnnserve.version": record.version}):
            return await self.inner.commit(record, expected_version, idempotency)

    async def delete(self, session_id: str) -> None:
        if tracing.capture() is None:
            return await self.inner.delete(session_id)
        with tracing.span("store.delete", self._attrs):
            await self.inner.delete(session_id)

    async def get_idempotent(self, session_id: str, key: str) -> IdempotencyRecord | None:
        if tracing.capture() is None:
            return await self.inner.get_idempotent(session_id, key)
        with tracing.span("store.get_idempotent", self._attrs):
            return await self.inner.get_idempotent(session_id, key)

    # -- the rest, as they are
    async def count(self) -> int:
        return await self.inner.count()

    async def count_graph(self, model: str, sha256: str) -> int:
        return await self.inner.count_graph(model, sha256)

    async def put_idempotent(self, session_id: str, key: str, record: IdempotencyRecord) -> None:
        await self.inner.put_idempotent(session_id, key, record)

    def lock(self, session_id: str) -> AbstractAsyncContextManager[None]:
        return self.inner.lock(session_id)

    local_locks = False  # (each feed its own task, so that its spans are its request's)

    def lock_now(self, session_id: str) -> asyncio.Future[None] | None:
        raise RuntimeError("traced stores take locks one request at a time")

    def abandon(self, session_id: str, turn: asyncio.Future[None]) -> None:
        raise RuntimeError("traced stores take locks one request at a time")

    def unlock(self, session_id: str) -> None:
        raise RuntimeError("traced stores take locks one request at a time")

    async def sweep(self) -> int:
        return await self.inner.sweep()

    async def close(self) -> None:
        await self.inner.close()
