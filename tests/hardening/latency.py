"""Another client beside a hostile one: the same request in a loop, each answer's latency and
status recorded, for the tests that bound what a hostile client costs the others."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx


class LoopingClient:
    """`send(client) -> status` over and over until the block ends. Entering returns once the
    first answer is in (so a stressor over quickly is still measured against)."""

    def __init__(
        self, base: str, send: Callable[[httpx.Client], int], headers: dict[str, str] | None = None
    ) -> None:
        self.base, self.send, self.headers = base, send, headers or {}
        self.latencies: list[float] = []
        self.statuses: list[int | str] = []
        self._stop = threading.Event()
        self._first = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=60, headers=self.headers) as c:
            while not self._stop.is_set():
                t = time.perf_counter()
                try:
                    status: int | str = self.send(c)
                except httpx.HTTPError as e:  # recorded, so the test names it
                    status = type(e).__name__
                self.latencies.append(time.perf_counter() - t)
                self.statuses.append(status)
                self._first.set()

    def __enter__(self) -> LoopingClient:
        self._thread.start()
        assert self._first.wait(30), "the other client's first request got no answer in 30 s"
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(60)

    @property
    def failures(self) -> list[int | str]:
        return [s for s in self.statuses if s != 200]

    def p99(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
