"""`SendWatch`: the per-connection stall guard on every send to a client."""

from __future__ import annotations

import asyncio
import time

import pytest
from starlette.types import Message

from service.api.middleware.limits import ClientStalled, SendWatch


async def test_prompt_sends_pass_and_share_one_timer() -> None:
    got: list[Message] = []

    async def send(m: Message) -> None:
        got.append(m)

    watch = SendWatch(send, 0.05)
    loop = asyncio.get_running_loop()
    timers_before = len(loop._scheduled)  # type: ignore[attr-defined]
    for i in range(1000):
        await watch({"i": i})
    # one lazily armed timer for the connection, not one per send
    assert len(loop._scheduled) - timers_before == 1  # type: ignore[attr-defined]
    await asyncio.sleep(0.12)  # the timer fires, finds nothing pending, does not re-arm
    assert not watch.fired and len(got) == 1000
    await watch({"i": "after"})
    watch.close()


async def test_a_send_pending_past_the_timeout_raises_client_stalled() -> None:
    release = asyncio.Event()

    async def send(m: Message) -> None:
        if m.get("stall"):
            await release.wait()

    watch = SendWatch(send, 0.1)
    await watch({})
    await asyncio.sleep(0.07)  # the timer was armed by the first send: re-arms for this one
    t0 = time.monotonic()
    with pytest.raises(ClientStalled):
        await watch({"stall": True})
    assert 0.08 <= time.monotonic() - t0 < 1.0  # measured from the stalled send's own start
    assert watch.fired
    with pytest.raises(ClientStalled):  # the connection is done for
        await watch({})
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # our cancellation was taken back


async def test_someone_elses_cancellation_still_propagates() -> None:
    async def send(m: Message) -> None:
        await asyncio.sleep(10)

    watch = SendWatch(send, 5.0)
    t = asyncio.ensure_future(watch({}))
    await asyncio.sleep(0.01)
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    assert not watch.fired
    watch.close()
