"""The request deadlines' one timer (`service/api/middleware/deadlines.py`); the 504 it leads to is
tested over HTTP in tests/hardening/test_limits.py."""

from __future__ import annotations

import asyncio

import pytest

from service.api.middleware.deadlines import Deadlines


async def test_a_task_past_its_deadline_is_cancelled_and_one_discarded_in_time_is_not() -> None:
    deadlines = Deadlines(tick_s=0.01)
    slow = asyncio.create_task(asyncio.sleep(10))
    quick = asyncio.create_task(asyncio.sleep(10))
    deadlines.add(slow, 0.05)
    deadlines.add(quick, 0.05)
    deadlines.discard(quick)  # its response started
    with pytest.raises(asyncio.CancelledError):
        await slow
    assert deadlines.expired(slow)
    assert not deadlines.expired(slow)  # asked once
    await asyncio.sleep(0.1)
    assert not quick.done() and not deadlines.expired(quick)
    assert len(deadlines) == 0 and deadlines._timer is None  # nothing due: no timer left
    quick.cancel()


async def test_a_deadline_fires_no_earlier_than_asked_and_at_most_a_tick_late() -> None:
    deadlines = Deadlines(tick_s=0.02)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    task = asyncio.create_task(asyncio.sleep(10))
    deadlines.add(task, 0.1)
    with pytest.raises(asyncio.CancelledError):
        await task
    waited = loop.time() - t0
    assert 0.1 <= waited < 0.1 + 0.02 + 0.1  # a tick late at most, with the loop's own slack


async def test_another_cancellation_is_not_a_deadline() -> None:
    """The middleware answers 504 only when the sweeper cancelled and nobody else did."""
    deadlines = Deadlines(tick_s=0.01)
    seen: list[str] = []

    async def request(timeout_s: float) -> None:
        me = asyncio.current_task()
        assert me is not None
        cancelling = me.cancelling()
        deadlines.add(me, timeout_s)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            if not deadlines.expired(me) or me.uncancel() > cancelling:
                seen.append("cancelled")
                raise
            seen.append("timeout")
        finally:
            deadlines.discard(me)

    task = asyncio.create_task(request(60))
    await asyncio.sleep(0.02)
    task.cancel()  # the client went away
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["cancelled"] and len(deadlines) == 0

    seen.clear()
    task = asyncio.create_task(request(0.03))
    await task
    assert seen == ["timeout"] and not task.cancelled()
