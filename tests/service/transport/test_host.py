"""The engine process's end of the wire: it serves any operation without naming it, skips what
it cannot decode, and forgets a dead worker's calls and stream slots."""

from __future__ import annotations

import os

import zmq
import zmq.asyncio

from service.protocol.ops import CreateSession, Feed, GetSession
from service.transport.remote import worker_identity
from tests.service.conftest import LM, ClientFactory, app_of
from tests.service.transport.conftest import hosted, until


async def test_a_dead_workers_slots_are_freed_by_forget_worker(
    make_client: ClientFactory,
) -> None:
    async with make_client(max_open_streams=4) as c:
        local = app_of(c).state.local
        async with hosted(local) as (host, worker):
            for _ in range(3):
                await worker.hold_stream("o").confirmed()
            assert local.slots.open == 3
            # the supervisor's word that the worker died (SIGKILL: it could not release)
            assert host.forget_worker(worker_identity(os.getpid())) == 3
            await until(lambda: local.slots.open == 0)


async def test_a_frame_it_cannot_decode_is_skipped_and_serving_goes_on(
    make_client: ClientFactory,
) -> None:
    async with make_client() as c:
        local = app_of(c).state.local
        async with hosted(local) as (host, worker):
            ctx = zmq.asyncio.Context()
            stranger = ctx.socket(zmq.DEALER)
            stranger.setsockopt(zmq.LINGER, 0)
            stranger.connect(host.address)
            try:
                await stranger.send(b"\xc1 not msgpack")
                info = await worker.call(CreateSession(LM, "h1", None, None, None))
                fed = await worker.call(Feed(info.session_id, "to be", 3, None, None, None))
                assert fed.version == 1
                assert (await local.call(GetSession("h1", None))).version == 1
            finally:
                stranger.close(linger=0)
                ctx.term()
