"""A streamed generation, read without I/O: SSE lines -> events -> token texts and a `Generation`.

The clients only pull lines off the response and pass them to `StreamState.feed`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from service.client.errors import StreamInterrupted, error_from_body
from service.client.types import Generation


class SSEParser:
    """Incremental `text/event-stream` parser: feed lines, get `(event, data)` per message."""

    def __init__(self) -> None:
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, line: str) -> Iterator[tuple[str | None, str]]:
        if line == "":
            if self._data:
                yield self._event, "\n".join(self._data)
            self._event, self._data = None, []
        elif line.startswith(":"):
            return  # comment / keep-alive
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                self._event = value
            elif name == "data":
                self._data.append(value)


@dataclass
class StreamState:
    """Turns the service's generation events into tokens and a final `Generation`.

    One state serves every attempt of a stream (a retry happens only before the first token),
    while each response is parsed afresh (`restart`). `on_result` sees the finished `Generation`.
    """

    on_result: Callable[[Generation], None] | None = None
    result: Generation | None = None
    yielded: int = 0
    finished: bool = False  # the terminal `[DONE]` arrived
    _sse: SSEParser = field(init=False, default_factory=SSEParser, repr=False)

    def restart(self) -> None:
        """A new response begins: drop any half-read message of the one before."""
        self._sse = SSEParser()

    def feed(self, line: str) -> Iterator[str]:
        """The token texts to hand out that this line completes."""
        for event, data in self._sse.feed(line):
            text = self.on_event(event, data)
            if text:
                yield text

    def end(self) -> Generation:
        """The response is over: the result (also given to `on_result`), or `StreamInterrupted`."""
        if self.result is None:
            raise StreamInterrupted("the stream ended without a result")
        if self.on_result is not None:
            self.on_result(self.result)
        return self.result

    def on_event(self, event: str | None, data: str) -> str | None:
        """The token text to hand out, or None; raises the typed error of an `error` event."""
        if data == "[DONE]":
            self.finished = True
            return None
        payload = json.loads(data)
        if event == "token":
            text: str = payload["text"]
            self.yielded += 1
            return text
        if event == "done":
            self.result = Generation.parse(payload)
            if self.result.replayed and self.yielded == 0:
                # an idempotent replay carries no token events: hand out the stored text whole
                return self.result.text or None
            return None
        if event == "error":
            raise error_from_body(None, payload)
        return None
