"""`TracedStore`: a session store whose record reads and writes are spans (`store.get`,
`store.commit`, ...), children of the request's span. Put in front of the store only when
tracing is on (`engine/startup.py`), so a server without tracing pays nothing for it; with
tracing on, an unsampled request's call goes straight to the store's own coroutine, or to its
plain call (`local`, `TracedRecords`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, TypeVar

from service import tracing
from service.sessions.record import IdempotencyRecord, SessionRecord
from service.sessions.store import LocalRecords, SessionStore

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

T = TypeVar("T")
R = TypeVar("R")


class TracedStore:
    """`SessionStore` over `inner`, each record operation of a sampled request in a span."""

    def __init__(self, inner: SessionStore) -> None:
        self.inner = inner
        self._attrs = {"db.system.name": type(inner).__name__}
        # feed batches as the store allows them (a sampled feed's store calls in a batch are
        # made under its own span: `SessionFeeds.feed_batch`)
        self.local_locks = inner.local_locks
        # (a feed reads and commits through it, as through `inner` itself)
        self.local = None if inner.local is None else TracedRecords(inner.local, self._attrs)

    def create(self, record: SessionRecord) -> Coroutine[Any, Any, None]:
        parent = tracing.capture()
        if parent is None:
            return self.inner.create(record)
        return self._traced("store.create", parent, self.inner.create(record))

    def get(self, session_id: str) -> Coroutine[Any, Any, SessionRecord]:
        parent = tracing.capture()
        if parent is None:
            return self.inner.get(session_id)
        return self._traced("store.get", parent, self.inner.get(session_id))

    def commit(
        self,
        record: SessionRecord,
        expected_version: int,
        idempotency: tuple[str, IdempotencyRecord] | None = None,
    ) -> Coroutine[Any, Any, SessionRecord]:
        parent = tracing.capture()
        if parent is None:
            return self.inner.commit(record, expected_version, idempotency)
        return self._traced(
            "store.commit",
            parent,
            self.inner.commit(record, expected_version, idempotency),
            {"rnnserve.version": record.version},
        )

    def delete(self, session_id: str) -> Coroutine[Any, Any, None]:
        parent = tracing.capture()
        if parent is None:
            return self.inner.delete(session_id)
        return self._traced("store.delete", parent, self.inner.delete(session_id))

    def get_idempotent(
        self, session_id: str, key: str
    ) -> Coroutine[Any, Any, IdempotencyRecord | None]:
        parent = tracing.capture()
        if parent is None:
            return self.inner.get_idempotent(session_id, key)
        return self._traced(
            "store.get_idempotent", parent, self.inner.get_idempotent(session_id, key)
        )

    async def _traced(
        self,
        name: str,
        parent: SpanContext,
        call: Coroutine[Any, Any, T],
        attrs: dict[str, Any] | None = None,
    ) -> T:
        with tracing.start(name, parent, {**self._attrs, **attrs} if attrs else self._attrs):
            return await call

    # -- the rest, as they are
    async def count(self) -> int:
        return await self.inner.count()

    async def count_graph(self, model: str, sha256: str) -> int:
        return await self.inner.count_graph(model, sha256)

    async def put_idempotent(self, session_id: str, key: str, record: IdempotencyRecord) -> None:
        await self.inner.put_idempotent(session_id, key, record)

    def lock(self, session_id: str, key: str | None = None) -> AbstractAsyncContextManager[None]:
        return self.inner.lock(session_id, key)

    def lock_now(self, session_id: str) -> asyncio.Future[None] | None:
        return self.inner.lock_now(session_id)

    def abandon(self, session_id: str, turn: asyncio.Future[None]) -> None:
        self.inner.abandon(session_id, turn)

    def unlock(self, session_id: str) -> None:
        self.inner.unlock(session_id)

    async def sweep(self) -> int:
        return await self.inner.sweep()

    async def close(self) -> None:
        await self.inner.close()


class TracedRecords:
    """`LocalRecords` over `inner`, each call of a sampled request recorded as a span (the
    same names and attributes as `TracedStore`'s coroutines): a sampled feed keeps the plain
    calls an unsampled one makes, with no coroutine and no `with` block a call."""

    def __init__(self, inner: LocalRecords, attrs: dict[str, Any]) -> None:
        self.inner = inner
        self._attrs = attrs

    def get_now(self, session_id: str) -> SessionRecord:
        parent = tracing.capture()
        if parent is None:
            return self.inner.get_now(session_id)
        return self._recorded("store.get", parent, self._attrs, self.inner.get_now, session_id)

    def commit_now(
        self,
        record: SessionRecord,
        expected_version: int,
        idempotency: tuple[str, IdempotencyRecord] | None = None,
    ) -> SessionRecord:
        parent = tracing.capture()
        if parent is None:
            return self.inner.commit_now(record, expected_version, idempotency)
        attrs = {**self._attrs, "rnnserve.version": record.version}
        return self._recorded(
            "store.commit",
            parent,
            attrs,
            self.inner.commit_now,
            record,
            expected_version,
            idempotency,
        )

    def get_idempotent_now(self, session_id: str, key: str) -> IdempotencyRecord | None:
        parent = tracing.capture()
        if parent is None:
            return self.inner.get_idempotent_now(session_id, key)
        return self._recorded(
            "store.get_idempotent",
            parent,
            self._attrs,
            self.inner.get_idempotent_now,
            session_id,
            key,
        )

    @staticmethod
    def _recorded(
        name: str, parent: SpanContext, attrs: dict[str, Any], call: Callable[..., R], *args: Any
    ) -> R:
        start = tracing.now_ns()
        try:
            out = call(*args)
        except BaseException as e:
            tracing.record(name, parent, start, tracing.now_ns(), attrs, e)
            raise
        tracing.record(name, parent, start, tracing.now_ns(), attrs)
        return out
