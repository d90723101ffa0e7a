"""The engine-to-loop inbox: order, no lost wake-ups, one wake-up per drain, failures reported.

Run on both event loops the server may use (asyncio's and uvloop's), and on the fallback path
(no eventfd: the loop's own `call_soon_threadsafe`)."""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvloop

from service.engine.inbox import Inbox


@pytest.fixture(params=["asyncio", "uvloop", "no-eventfd"])
def run(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    if request.param == "no-eventfd":
        monkeypatch.delattr(os, "eventfd")
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        yield runner.run


async def _until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.001)


def test_callbacks_from_threads_run_on_the_loop_in_order_without_lost_wake_ups(run: Any) -> None:
    async def main() -> None:
        inbox = Inbox(asyncio.get_running_loop())
        loop_thread = threading.get_ident()
        seen: dict[int, list[int]] = {0: [], 1: []}
        threads_ok: list[bool] = []

        def got(who: int, i: int) -> None:
            threads_ok.append(threading.get_ident() == loop_thread)
            seen[who].append(i)

        def producer(who: int) -> None:
            rng = random.Random(who)
            for i in range(3000):
                inbox.post(got, who, i)
                if rng.random() < 0.01:  # let the loop go idle now and then: real wake-ups
                    time.sleep(0.0005)

        threads = [threading.Thread(target=producer, args=(w,)) for w in (0, 1)]
        for t in threads:
            t.start()
        await _until(lambda: len(seen[0]) + len(seen[1]) == 6000)
        for t in threads:
            t.join()
        assert seen[0] == list(range(3000)) and seen[1] == list(range(3000))
        assert all(threads_ok)
        inbox.close()

    run(main())


def test_a_busy_loop_takes_many_posts_with_one_wake_up(
    run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = 0
    if hasattr(os, "eventfd_write"):
        real = os.eventfd_write

        def counted(fd: int, value: int) -> None:
            nonlocal writes
            writes += 1
            real(fd, value)

        monkeypatch.setattr(os, "eventfd_write", counted)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        inbox = Inbox(loop)
        calls = []
        wakes = []
        if not hasattr(os, "eventfd"):  # the fallback wakes the loop with call_soon_threadsafe
            real_cs = loop.call_soon_threadsafe

            def cs(*a: Any) -> Any:
                wakes.append(1)
                return real_cs(*a)

            loop.call_soon_threadsafe = cs  # type: ignore[method-assign]
        done = threading.Event()

        def producer() -> None:
            for i in range(100):
                inbox.post(calls.append, i)
            done.set()

        threading.Thread(target=producer).start()
        done.wait(5)  # the loop is blocked here: busy, not draining
        await _until(lambda: len(calls) == 100)
        assert calls == list(range(100))
        assert writes + len(wakes) == 1  # one wake-up for the whole batch
        inbox.close()

    run(main())


def test_a_failing_callback_is_reported_and_the_rest_still_run(run: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, ctx: reported.append(ctx))
        inbox = Inbox(loop)
        calls: list[int] = []

        def boom() -> None:
            raise ValueError("boom")

        def producer() -> None:
            inbox.post(calls.append, 1)
            inbox.post(boom)
            inbox.post(calls.append, 2)

        threading.Thread(target=producer).start()
        await _until(lambda: len(calls) == 2)
        assert calls == [1, 2]
        assert isinstance(reported[0]["exception"], ValueError)
        inbox.close()

    run(main())


def test_close_runs_what_is_queued_and_releases_the_descriptor(run: Any) -> None:
    async def main() -> None:
        inbox = Inbox(asyncio.get_running_loop())
        fd = inbox._fd
        calls: list[int] = []
        inbox.post(calls.append, 1)  # from the loop's own thread: queued, not yet run
        inbox.close()
        assert calls == [1]
        if fd is not None:
            with pytest.raises(OSError):
                os.fstat(fd)

    run(main())
