"""Request deadlines: many requests, one timer.

`asyncio.timeout` around every request (a `Timeout` object, a timer pushed on the loop's heap, a
reschedule when the response starts, the exit bookkeeping) was ~4.7 % of an API worker's CPU per
session step (py-spy, bench `step` workload). Here a request costs a dict insert and a delete,
and one timer per `tick_s` cancels whichever registered task is past its deadline. A deadline
fires up to `tick_s` late, which is nothing next to a request timeout of seconds.

The cancellation is told apart from any other the way `asyncio.timeout` does it: `expired()`
says this sweeper cancelled the task, and `Task.uncancel()` says nobody else did as well.
"""

from __future__ import annotations

import asyncio


class Deadlines:
    def __init__(self, tick_s: float = 0.05) -> None:
        self.tick_s = tick_s
        self._due: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, task: asyncio.Task[object], timeout_s: float) -> None:
        """Cancel `task` once `timeout_s` has passed, unless `discard`ed before."""
        loop = asyncio.get_running_loop()
        self._due[task] = loop.time() + timeout_s
        if self._timer is None:
            self._timer = loop.call_later(self.tick_s, self._sweep)

    def discard(self, task: asyncio.Task[object]) -> None:
        """No deadline for `task` any more (and forget that it expired, if it did)."""
        self._due.pop(task, None)
        self._expired.discard(task)

    def expired(self, task: asyncio.Task[object]) -> bool:
        """Whether this sweeper cancelled `task` (asked once: it forgets the answer)."""
        if task in self._expired:
            self._expired.discard(task)
            return True
        return False

    def __len__(self) -> int:
        return len(self._due)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for task in [t for t, due in self._due.items() if due <= now]:
            del self._due[task]
            if not task.done():
                self._expired.add(task)
                task.cancel()
        self._timer = loop.call_later(self.tick_s, self._sweep) if self._due else None
