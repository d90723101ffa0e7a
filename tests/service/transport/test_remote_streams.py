"""A worker's view of a remote generation and of its stream slot: tokens wait for their client
up to a bound, and a slot is the engine's, taken and given back over the wire."""

from __future__ import annotations

import pytest

from service.engine.stream_slots import StreamSlots
from service.errors import Overloaded
from service.protocol.events import EVENT_BYTES, ClientTooSlow
from service.protocol.messages import Finished, GenerateParams
from service.protocol.ops import Generate
from service.transport.remote import RemoteClient
from tests.service.conftest import LM, ClientFactory, app_of, no_streams_left
from tests.service.transport.conftest import Wired, hosted, until


async def test_a_slot_held_over_the_wire_is_the_engines_and_comes_back(
    make_client: ClientFactory,
) -> None:
    async with make_client(engine_transport="zmq", max_open_streams=2) as c:
        app = app_of(c)
        slots: StreamSlots = app.state.local.slots
        remote = app.state.services.client
        assert isinstance(remote, RemoteClient)
        first = remote.hold_stream("o")
        await first.confirmed()
        await remote.hold_stream(None).confirmed()
        assert slots.open == 2
        third = remote.hold_stream("o")
        with pytest.raises(Overloaded):  # the engine's error, raised again in the worker
            await third.confirmed()
        third.release()  # a refused hold is released like any other (nothing to give back)
        first.release()
        first.release()  # once only
        await until(lambda: slots.open == 1)
        assert slots.held_by("o") == 0


async def test_tokens_its_client_does_not_take_are_bounded(make_client: ClientFactory) -> None:
    """Past `stream_buffer_bytes` of tokens waiting for their client, the stream is cancelled
    and its client reads `client_too_slow` after the tokens that fit."""
    async with make_client() as c:
        app = app_of(c)
        local = app.state.local
        async with hosted(local, stream_buffer_bytes=5 * EVENT_BYTES) as (_, worker):
            gen = await worker.open(Generate(LM, GenerateParams(prompt="ab", max_tokens=200)))
            # frames reach the worker in order: the bound is passed before any end can arrive
            await until(lambda: gen._ended)
            await no_streams_left(app)
            got = 0
            with pytest.raises(ClientTooSlow) as e:
                async for ev in gen.events():
                    assert not isinstance(ev, Finished)
                    got += 1
            await gen.aclose()
            assert 0 < got <= 5 and e.value.code == "client_too_slow"


async def test_a_stream_read_to_its_end_gives_the_engines_result(wired: Wired) -> None:
    p = GenerateParams(prompt="ROMEO:", max_tokens=12, seed=3, temperature=0.8)
    far = await wired.worker.open(Generate(LM, p))
    near = await wired.local.open(Generate(LM, p))
    try:
        a, b = await far.collect(), await near.collect()
    finally:
        await far.aclose()
        await near.aclose()
    assert a == b and a.usage.completion_tokens == 12
