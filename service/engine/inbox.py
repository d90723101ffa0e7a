"""Callbacks from an engine thread to the event loop, in order, with as few wake-ups as it takes.

`loop.call_soon_threadsafe` wakes the loop on every call (asyncio writes its self-pipe, uvloop
sends a libuv async handle): ~11 us a call on the 2-vCPU VM the benchmarks run on, most of it
waking the other CPU, paid by the engine thread once per decode step. Here a callback goes into
a FIFO and the loop is woken through an eventfd (~6-7 us, measured side by side) and only when it
is not already due to drain the FIFO: a loop still busy with the last step's tokens takes the
next step's with them, at no cost to either thread.

The wake-up protocol (one flag, `_due`, read and written under the GIL):
* post: append, then wake only if not `_due` (and set it);
* drain: consume the eventfd, clear `_due`, then run everything queued.
A post that finds `_due` set was appended before the drain that clears it runs its queue; one
that finds it clear writes the eventfd after the drain consumed it, so the loop wakes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import Callable
from typing import Any


class Inbox:
    """Create on the loop's thread; `post` from any thread; `close` once no thread posts."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._due = False
        self._fd: int | None = None
        if hasattr(os, "eventfd"):  # Linux; elsewhere the loop's own thread-safe call
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            try:
                loop.add_reader(fd, self._drain)
            except NotImplementedError:  # a loop without add_reader (Windows' proactor)
                os.close(fd)
            else:
                self._fd = fd

    def post(self, fn: Callable[..., None], *args: Any) -> None:
        """Run `fn(*args)` on the loop, after everything posted before it."""
        self._queue.append((fn, args))
        if self._due:
            return
        self._due = True
        if self._fd is not None:
            os.eventfd_write(self._fd, 1)
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(BlockingIOError):  # a spurious wake-up: already consumed
                os.eventfd_read(self._fd)
        self._due = False
        queue = self._queue
        while queue:
            fn, args = queue.popleft()
            try:
                fn(*args)
            except Exception as e:  # as the loop reports a failed callback; the rest still run
                self._loop.call_exception_handler(
                    {"message": f"inbox callback {fn!r} failed", "exception": e}
                )

    def close(self) -> None:
        """Stop listening and release the eventfd. Only once no thread can post any more: a
        later write could reach whatever file reuses the descriptor number."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                self._loop.remove_reader(fd)
            os.close(fd)
        self._drain()  # whatever is still queued
