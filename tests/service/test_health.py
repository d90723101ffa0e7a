"""Readiness that tells the truth (issue 32.9): /readyz and /v2/health/ready answer 503 while a
model's engine thread holds work without moving, or while the engine process answers nothing
(frozen with SIGSTOP), and ready again once it moves."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.cluster import start, stop
from tests.service.conftest import CLS, ClientFactory, app_of


async def _until_status(c: httpx.AsyncClient, path: str, status: int) -> httpx.Response:
    deadline = time.monotonic() + 10
    while True:
        r = await c.get(path)
        if r.status_code == status:
            return r
        assert time.monotonic() < deadline, r.text
        await asyncio.sleep(0.02)


async def test_a_stuck_engine_thread_is_not_ready_until_it_moves(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with make_client(stall_timeout_s=0.2) as c:
        assert (await c.get("/readyz")).status_code == 200  # idle is not stalled
        runner = app_of(c).state.local.engine.schedulers[CLS].runner
        gate, entered = threading.Event(), threading.Event()
        real_run = runner.run

        def stuck_run(*args: Any) -> Any:  # an onnxruntime call that does not return
            entered.set()
            gate.wait(10)
            return real_run(*args)

        monkeypatch.setattr(runner, "run", stuck_run)
        predict = asyncio.create_task(c.post(f"/v1/models/{CLS}/predict", json={"inputs": ["ok"]}))
        try:
            await asyncio.to_thread(entered.wait, 5)
            r = await _until_status(c, "/readyz", 503)
            assert r.json()["ready"] is False and CLS in r.json()["problems"]
            assert "has not moved" in r.json()["problems"][CLS]
            v2 = await c.get("/v2/health/ready")
            assert v2.status_code == 503 and CLS in v2.json()["error"]
        finally:
            gate.set()
        assert (await predict).status_code == 200
        r = await _until_status(c, "/readyz", 200)
        assert r.json()["problems"] == {}


def test_a_frozen_engine_process_is_not_ready_until_it_thaws(tmp_path: Path) -> None:
    c = start(tmp_path, workers=1)
    engine = c.engine_pid()
    try:
        assert httpx.get(f"{c.base}/readyz", timeout=10).status_code == 200
        os.kill(engine, signal.SIGSTOP)
        try:
            r = httpx.get(f"{c.base}/readyz", timeout=10)  # answers in ~2 s, not never
            assert r.status_code == 503, r.text
            assert "did not answer" in r.json()["problems"]["engine"]
        finally:
            os.kill(engine, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while httpx.get(f"{c.base}/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        stop(c)
