"""A worker's view of a remote generation and of its stream slot: tokens wait for their client
up to a bound, a routed stream's ids are decoded and its stop strings matched here exactly as
the engine does for its own, and a slot is the engine's, taken and given back over the wire."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from service.engine.stream_slots import StreamSlots
from service.errors import Overloaded
from service.protocol.events import EVENT_BYTES, ClientTooSlow
from service.protocol.messages import Finished, GenerateParams, GenerationResult
from service.protocol.ops import CreateSession, Feed, Generate, GetSession, SessionGenerate
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


async def _events(gen: Any) -> tuple[list[tuple[str, int, int]], GenerationResult]:
    """Every token event (text, id, index) and the result."""
    toks: list[tuple[str, int, int]] = []
    try:
        async for ev in gen.events():
            if isinstance(ev, Finished):
                return toks, ev.result
            toks.append((ev.text, ev.token_id, ev.index))
    finally:
        await gen.aclose()
    raise AssertionError("no result")


async def test_a_routed_stream_gives_the_in_process_events_and_result_with_stop_strings(
    wired: Wired,
) -> None:
    """The worker decodes a routed stream's ids and matches its stop strings' text; the engine
    ends it where its automaton says. Every event and the result equal the engine's own path
    (one process): a stop string found mid-text, one that never completes but holds text back
    at the end (released with the last token), and both at once."""
    base = GenerateParams(prompt="ROMEO:", max_tokens=40, seed=11, temperature=1.0)
    whole = await wired.local.open(Generate(LM, base))
    _, plain = await _events(whole)
    text = plain.text
    assert len(text) == 40
    never = text[-2:] + "\x00"  # its first two characters end the text: held back, then released
    mid = text[12:15]
    for stop in [(never,), (mid,), (never, mid), (mid[1:], mid)]:
        p = msgspec.structs.replace(base, stop=stop)
        far = await wired.worker.open(Generate(LM, p))
        near = await wired.local.open(Generate(LM, p))
        assert wired.worker._streams[far._rid]._vocab is not None  # routed: decoded there
        (a_toks, a), (b_toks, b) = await _events(far), await _events(near)
        assert (a_toks, a) == (b_toks, b), stop
        assert a.finish_reason == ("length" if stop == (never,) else "stop")
    ends = await _events(
        await wired.worker.open(Generate(LM, msgspec.structs.replace(base, stop=(never,))))
    )
    assert ends[0][-1][0].endswith(text[-2:])  # the held-back text came with the last token


async def test_a_session_generation_ending_on_a_stop_commits_the_state_one_process_commits(
    wired: Wired,
) -> None:
    """Over the wire the engine ends a routed session stream on its stop string at the token
    the text matcher finds it, and commits the state after exactly that token, and the text
    the worker handed its client: the next feed's output, the version and the counts equal a
    session that ran in one process."""
    p = GenerateParams(prompt="ROMEO:", max_tokens=50, seed=4, temperature=1.0)
    probe = await _events(await wired.local.open(Generate(LM, p)))
    stop = (probe[1].text[20:22],)  # ends the stream part way
    infos, feeds, results = [], [], []
    for client in (wired.worker, wired.local):
        sid = (await client.call(CreateSession(LM, None, None, None, None))).session_id
        gen = await client.open(
            SessionGenerate(sid, msgspec.structs.replace(p, stop=stop), None, "k1", None)
        )
        results.append((await _events(gen))[1])
        feeds.append(await client.call(Feed(sid, "x", 5, None, None, None)))
        infos.append(await client.call(GetSession(sid, None)))
    a, b = results
    assert a.finish_reason == "stop" and a.stop == stop[0]
    assert msgspec.structs.replace(a, session_id=None) == msgspec.structs.replace(
        b, session_id=None
    )
    (fa, fb), (ia, ib) = feeds, infos
    assert fa.output == fb.output and (fa.version, fa.tokens) == (fb.version, fb.tokens)
    assert (ia.version, ia.tokens_seen) == (ib.version, ib.tokens_seen)
