"""Stop strings as text: what a generation's consumer may be handed now, and what it must hold
back because it could still become a stop string. Both sides of the wire run it: the engine for
the streams whose text it makes, a worker for the routed streams whose tokens it decodes. Where a
stop string ENDS a stream is decided in the engine over the whole batch
(`engine/stops.py`, which precomputes exactly this matcher's decisions).
"""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """Holds back text that could still become a stop string; reports when one completes."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.buf = ""
        self.matched: str | None = None

    def push(self, text: str) -> str:
        """Add generated text; return what may be emitted now."""
        if not self.stops:
            return text
        self.buf += text
        first = None
        for s in self.stops:
            i = self.buf.find(s)
            if i >= 0 and (first is None or i < first[0]):
                first = (i, s)
        if first is not None:
            self.matched = first[1]
            out, self.buf = self.buf[: first[0]], ""
            return out
        hold = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.buf)), 0, -1):
                if self.buf.endswith(s[:n]):
                    hold = max(hold, n)
                    break
        out = self.buf[: len(self.buf) - hold]
        self.buf = self.buf[len(self.buf) - hold :]
        return out

    def release(self, text: str, last: bool) -> str:
        """A token's text through the matcher: what may be handed over now (`last`: the stream
        ends with this token, so text held back for a stop that did not come goes too)."""
        out = self.push(text)
        if last and self.matched is None:
            out += self.flush()
        return out

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out
