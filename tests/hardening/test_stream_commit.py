"""Where a session stream commits: once its client has been handed every token, in process and
over the wire (docs/reliability.md, guarantee 2). A client that leaves with its last tokens
unsent commits nothing; one that leaves with only the `done` event unsent finds the generation
committed: it was handed the whole stream, and no server can tell whether a client read the
last bytes it was sent."""

from __future__ import annotations

import asyncio

import pytest
from fastapi import FastAPI
from starlette.types import Message

from service.transport.remote_streams import _FINISHING
from tests.hardening.asgi import HeldClient
from tests.service.conftest import (
    LM,
    ClientFactory,
    app_of,
    gate_decode_steps,
    no_streams_left,
)

TOKENS = 60


def _tokens(m: Message) -> int:
    return m.get("body", b"").count(b"event: token")


def _done(m: Message) -> bool:
    return b'"finish_reason"' in m.get("body", b"")


async def _the_end_reached_the_writer(app: FastAPI, transport: str) -> None:
    """Wait until the generation's end is in the buffer its writer reads: over the wire the
    worker's `RemoteGeneration` holds `Finishing` (it follows every token); in process the
    engine's posted callbacks (the last tokens, then the end) have run."""
    if transport == "inprocess":
        for _ in range(3):
            await asyncio.sleep(0)
        return
    client = app.state.services.client
    for _ in range(1000):
        if any(_FINISHING in g._items for g in client._streams.values()):
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the worker never received the end of the stream")


@pytest.mark.parametrize("transport", ["inprocess", "zmq"])
@pytest.mark.parametrize("unsent", ["last_tokens", "done"])
async def test_a_session_stream_commits_once_every_token_is_handed_over(
    make_client: ClientFactory, transport: str, unsent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with make_client(engine_transport=transport) as c:
        app = app_of(c)
        # the engine waits after its first decode step until the client is held at its first
        # tokens, so that first write cannot already carry all of them (CI under load saw it)
        gate = gate_decode_steps(app, monkeypatch)
        sid = (await c.post("/v1/sessions", json={"model": LM})).json()["session_id"]
        await c.post(f"/v1/sessions/{sid}/feed", json={"text": "To be"})
        before = (await c.get(f"/v1/sessions/{sid}")).json()
        taken = 0

        def hold_at(m: Message) -> bool:
            nonlocal taken
            first = taken == 0 and _tokens(m) > 0
            taken += _tokens(m)
            if unsent == "done":
                return first or _done(m)
            return first or taken == TOKENS  # the message that completes the tokens

        held = HeldClient(hold_at=hold_at)
        body = {"max_tokens": TOKENS, "stream": True}
        task = asyncio.create_task(held.call(app, "POST", f"/v1/sessions/{sid}/generate", body))
        # held at its first tokens until the engine has generated the rest, so the consumer
        # then finds the last tokens and the end together (the case that must not commit early)
        await asyncio.wait_for(held.held.wait(), 10)
        assert taken < TOKENS
        gate.set()
        await no_streams_left(app, within_s=5.0)
        await _the_end_reached_the_writer(app, transport)
        held.held.clear()
        held.release.set()  # (the held send wakes; the next hold waits again)
        held.release.clear()
        await asyncio.wait_for(held.held.wait(), 10)
        await asyncio.sleep(0.05)  # time to commit, were it not waiting for the client
        held.gone.set()  # the client leaves with that message unsent
        await asyncio.wait_for(task, 10)
        held.release.set()
        after = (await c.get(f"/v1/sessions/{sid}")).json()
        got = sum(_tokens(m) for m in held.messages)
        assert not any(_done(m) for m in held.messages)
        if unsent == "done":
            assert got == TOKENS
            assert after["version"] == before["version"] + 1
            assert after["tokens_seen"] == before["tokens_seen"] + TOKENS
        else:
            assert got < TOKENS
            assert after == before
        # the session's lock is free
        r = await asyncio.wait_for(c.post(f"/v1/sessions/{sid}/feed", json={"text": "x"}), 5)
        assert r.status_code == 200
