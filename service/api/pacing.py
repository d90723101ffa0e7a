"""Write pacing for token streams under load: fewer, larger writes when a process serves many.

Each SSE write costs an API process ~35 µs of CPU whatever it carries (the task's wake-up, the
ASGI send chain, one socket `send`, and the client's read at the other end), and under load
that per-write cost, not the tokens, is most of what a worker spends on a stream. A writer that
falls behind already takes every token waiting (one write for several); pacing makes the same
happen before the machine is saturated: with `n` streams open in this process, a stream waits
`n / writes_per_s` after each write before it takes what has arrived, so this process's
streams together make about `writes_per_s` writes a second at most. A few streams wait nothing
(below `MIN_GAP_S` a timer costs more than it saves, and a decode step takes longer anyway).

The price is the gap between writes: at the default, 64 streams get at most a write each
6.4 ms and 256 each 25.6 ms (docs/benchmarks.md has the A/B). No token is delayed by more than
one gap, and the end of a stream is never waited for: pacing applies between token writes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

MIN_GAP_S = 0.001


class Pacer:
    """One per API process: counts its open token streams and spaces their writes."""

    def __init__(self, writes_per_s: float) -> None:
        self.writes_per_s = writes_per_s
        self.open_streams = 0

    def gap_s(self) -> float:
        """How long a stream waits after a write before taking its next tokens."""
        if self.writes_per_s <= 0:
            return 0.0
        gap = self.open_streams / self.writes_per_s
        return gap if gap >= MIN_GAP_S else 0.0

    @contextlib.contextmanager
    def stream(self) -> Iterator[Pacer]:
        """Count a stream as open for the block (however it ends)."""
        self.open_streams += 1
        try:
            yield self
        finally:
            self.open_streams -= 1

    async def after_write(self) -> None:
        """Call after a stream's write and before it asks for more tokens."""
        gap = self.gap_s()
        if gap:
            await asyncio.sleep(gap)
