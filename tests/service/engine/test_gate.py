"""Decode steps paced by their consumers: a closed gate holds a scheduler's decode steps (not its
prefills) until it opens, and a hold ends by itself after `max_hold_s`."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from service.engine.gate import DecodeGate
from service.engine.scheduler import Scheduler, SchedulerConfig
from tests.service.engine.test_scheduler import FakeRunner, _stream


async def test_a_closed_gate_holds_decode_steps_but_not_prefills_until_it_opens() -> None:
    runner = FakeRunner()
    gate = DecodeGate(max_hold_s=30.0)
    s = Scheduler(runner, SchedulerConfig(prefill_pass_ms=0.0), None, gate)  # type: ignore[arg-type]
    s.start()
    try:
        gate.close()
        st = _stream(runner, max_tokens=3)
        s.join(st)
        logits, _ = await s.prefill(np.array([1, 2, 3]))  # a prefill runs while steps are held
        assert logits.shape == (58,)
        await asyncio.sleep(0.05)
        assert st.produced == 0 and not any(c[1] == 1 and c[0] == 1 for c in runner.calls[1:])
        assert s.stalled_s() is None  # held by the gate is waiting, not stalled
        gate.open()  # wakes the engine thread
        async with asyncio.timeout(5):
            while st.produced < 3:
                await asyncio.sleep(0.005)
    finally:
        await s.close(1)


async def test_a_hold_ends_by_itself_when_a_worker_stops_reading() -> None:
    gate = DecodeGate(max_hold_s=0.05)
    gate.close()
    assert 0 < gate.held_s() <= 0.05
    gate.close()  # a hold under way keeps its start
    t0 = time.monotonic()
    while gate.held_s():
        await asyncio.sleep(0.01)
    assert time.monotonic() - t0 < 1.0
    gate.open()
    assert gate.held_s() == 0
