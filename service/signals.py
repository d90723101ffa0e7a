"""`on_signal`: a signal handled on the event loop for the length of a block."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def on_signal(sig: int, handler: Callable[[], object]) -> Iterator[None]:
    """While in the block, `sig` runs `handler` on the event loop, and the previous handler
    comes back after (main thread on Unix only; elsewhere nothing is installed)."""
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(sig)
    try:
        loop.add_signal_handler(sig, handler)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / no support
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(sig)
        with contextlib.suppress(TypeError, ValueError):
            signal.signal(sig, previous)
