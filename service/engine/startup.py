"""The engine, assembled and running: models loaded, schedulers started, the session store open and
swept (`running_engine`). The engine process runs it (`supervisor.py`); so does a one-process
server (`api/app.py`) and the tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from service import tracing
from service.engine.engine import Engine
from service.engine.local import InProcessClient
from service.engine.registry import LoadOptions, Registry, load_registry
from service.engine.repository import ModelRepository
from service.engine.scheduler import SchedulerConfig
from service.engine.stream_slots import StreamSlots
from service.logging import get_logger
from service.metrics import Metrics
from service.sessions import Clock, MemoryStore, SessionStore
from service.sessions.service import SessionService
from service.sessions.traced import TracedStore
from service.settings import Settings

log = get_logger("app")


def build_store(settings: Settings, metrics: Metrics, clock: Clock) -> SessionStore:
    if settings.store == "redis":
        from service.sessions.redis_store import RedisStore

        return RedisStore(
            settings.redis_url,
            settings.max_sessions,
            evict=settings.session_evict,
            expired_memory_s=settings.expired_memory_s,
            clock=clock,
            on_change=metrics.live_sessions.set,
            on_evict=lambda why: metrics.session_evictions.labels(why).inc(),
            max_per_owner=settings.max_sessions_per_key,
            socket_timeout_s=settings.redis_timeout_s,
            cluster=settings.redis_cluster,
            wait_replicas=settings.redis_wait_replicas,
            wait_timeout_s=settings.redis_wait_timeout_s,
            sentinels=settings.sentinel_addresses(),
            sentinel_master=settings.redis_sentinel_master,
        )
    return MemoryStore(
        settings.max_sessions,
        evict=settings.session_evict,
        expired_memory_s=settings.expired_memory_s,
        clock=clock,
        on_change=metrics.live_sessions.set,
        on_evict=lambda why: metrics.session_evictions.labels(why).inc(),
        max_per_owner=settings.max_sessions_per_key,
    )


@contextlib.asynccontextmanager
async def running_engine(
    settings: Settings,
    m: Metrics,
    *,
    registry: Registry | None = None,
    store: SessionStore | None = None,
    clock: Clock = time.time,
) -> AsyncIterator[InProcessClient]:
    """Models loaded, schedulers running, the session store open and swept: the engine, ready
    to serve through the client it yields (in the API's process, or in the engine process)."""
    reg = registry or load_registry(
        settings.models_dir, settings.providers, settings.intra_op_threads, settings.variant
    )
    m.model_load_failures.set(len(reg.failed))
    config = SchedulerConfig(
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        max_queue=settings.max_queue,
        max_streams=settings.max_streams,
        max_batch_tokens=settings.max_batch_tokens,
        prefill_chunk_tokens=settings.prefill_chunk_tokens,
        prefill_pass_ms=settings.prefill_pass_ms,
        max_request_tokens=settings.max_request_tokens,
        stall_timeout_s=settings.stall_timeout_s,
        stream_buffer_bytes=settings.stream_buffer_bytes,
        state_on_device=settings.state_on_device,
    )
    engine = Engine(reg, config, m)
    engine.intra_op_threads = settings.intra_op_threads
    engine.start()
    st = store or build_store(settings, m, clock)
    svc = SessionService(
        engine,
        TracedStore(st) if tracing.enabled else st,  # record reads and writes as spans
        default_ttl_s=settings.session_ttl_s,
        max_ttl_s=settings.max_session_ttl_s,
        idempotency_ttl_s=settings.idempotency_ttl_s,
        clock=clock,
    )
    repository = ModelRepository(
        engine,
        st,
        settings.models_dir,
        LoadOptions(settings.providers, settings.intra_op_threads, settings.variant),
        settings.unload_drain_s,
        settings.shutdown_timeout_s,
    )
    sweeper = asyncio.create_task(_sweep(st))
    log.info("serving", extra={"models": sorted(reg.models), "failed": len(reg.failed)})
    try:
        slots = StreamSlots(settings.max_open_streams, settings.max_streams_per_key)
        yield InProcessClient(engine, svc, slots, repository)
    finally:
        await repository.close()
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await engine.close(settings.shutdown_timeout_s)
        await st.close()
        log.info("stopped")


async def _sweep(store: SessionStore, every_s: float = 30.0) -> None:
    while True:
        await asyncio.sleep(every_s)
        try:
            await store.sweep()
        except Exception:
            log.exception("session sweep failed")
