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

from tests.servers import start, stop
from tests.service.conftest import (
    CLS,
    LM,
    ClientFactory,
    app_of,
    gate_decode_steps,
    no_streams_left,
)
from tests.service.supervisor.conftest import CLUSTER


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
        runner = app_of(c).state.local.engine.scheduler(CLS).runner
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
            # the v2 model readiness says it of the stuck model, and only of it
            one = await c.get(f"/v2/models/{CLS}/ready")
            assert one.status_code == 503 and "has not moved" in one.json()["error"]
            assert (await c.get(f"/v2/models/{LM}/ready")).status_code == 200
        finally:
            gate.set()
        assert (await predict).status_code == 200
        r = await _until_status(c, "/readyz", 200)
        assert r.json()["problems"] == {}


async def test_liveness_fails_once_the_engine_process_is_gone(make_client: ClientFactory) -> None:
    async with make_client(engine_transport="zmq") as c:
        assert (await c.get("/healthz")).json() == {"status": "ok"}
        assert (await c.get("/v2/health/live")).json() == {"live": True}
        app_of(c).state.services.client.engine_gone()  # what the supervisor's SIGUSR1 does
        r = await c.get("/healthz")
        assert (r.status_code, r.json()) == (503, {"status": "engine_gone"})
        assert (await c.get("/v2/health/live")).status_code == 503


def test_a_frozen_engine_process_is_not_ready_until_it_thaws(tmp_path: Path) -> None:
    c = start(tmp_path, workers=1, **CLUSTER)
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


async def test_load_says_each_models_queue_and_streams_and_the_slots_held(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`GET /v1/load` (the engine's `Load` operation): a stream in the decode batch shows, with
    its slot, and both are gone once it ends."""
    async with make_client(max_open_streams=7) as c:
        app = app_of(c)
        idle = (await c.get("/v1/load")).json()
        assert idle["open_streams"] == 0 and idle["max_open_streams"] == 7
        assert idle["models"][LM] == {"queued": 0, "streams": 0}
        gate = gate_decode_steps(app, monkeypatch)  # the stream stays in the batch
        sched = app.state.local.engine.scheduler(LM)
        body = {"prompt": "ab", "max_tokens": 50}
        generating = asyncio.create_task(c.post(f"/v1/models/{LM}/generate", json=body))
        try:
            async with asyncio.timeout(10):
                while sched.active_streams == 0:
                    await asyncio.sleep(0.005)
            busy = (await c.get("/v1/load")).json()
            assert busy["open_streams"] == 1 and busy["models"][LM]["streams"] == 1
        finally:
            gate.set()
        assert (await generating).status_code == 200
        await no_streams_left(app)
        assert (await c.get("/v1/load")).json()["open_streams"] == 0
