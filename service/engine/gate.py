"""Decode steps paced by their consumers: a gate the event loop closes while the workers are
behind on the tokens already sent, and the engine threads wait on before their next step.

Without it the engine runs ahead of whoever takes its tokens. With one API worker on a shared
2-core machine (the worker is the bottleneck there), the engine stepped ~9x as often as needed,
on a batch that averaged 28 of 256 streams: its CPU per token was the fixed cost of a step
spread over a few rows, taken from the worker that was the limit, and the tokens waited in
the worker's buffers anyway (docs/benchmarks.md). Held back, the streams stay in the batch and
each step carries more of them.

The engine process's host closes the gate when a worker has `window` messages of tokens it has
not yet taken off its socket (`transport/host.py`), and opens it as the worker says it took
them. A hold lasts at most `max_hold_s`: a worker that stops reading (stuck, or dying before
the supervisor says so) then no longer holds the others back; its tokens wait in the socket as
they did before. In one process nothing closes it.
"""

from __future__ import annotations

import threading
import time


class DecodeGate:
    def __init__(self, max_hold_s: float = 0.5) -> None:
        self.max_hold_s = max_hold_s
        self._closed_at: float | None = None  # set and cleared on the event loop
        self._waiting: list[threading.Condition] = []  # the schedulers' conditions

    def attach(self, cv: threading.Condition) -> None:
        """A scheduler's condition, notified when the gate opens (before its thread starts)."""
        self._waiting.append(cv)

    def close(self) -> None:
        """Hold the next decode steps (a hold already under way keeps its start)."""
        if self._closed_at is None:
            self._closed_at = time.monotonic()

    def open(self) -> None:
        if self._closed_at is None:
            return
        self._closed_at = None
        for cv in self._waiting:  # under each lock: an engine thread between its check and its
            with cv:  # wait holds it, so this notify cannot fall between the two
                cv.notify()

    def held_s(self) -> float:
        """How much longer the decode steps wait (0: they may run). Read by engine threads."""
        at = self._closed_at
        if at is None:
            return 0.0
        return max(0.0, at + self.max_hold_s - time.monotonic())
