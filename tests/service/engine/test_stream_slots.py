"""The replica's stream caps (`service/engine/stream_slots.py`), held in the engine: counted for
all callers and per owner, and released when a worker lets go, over the wire as in process, or
when the engine forgets a dead worker's calls."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from service.engine.engine import Engine
from service.engine.stream_slots import StreamSlots
from service.errors import Overloaded, StreamLimit
from service.protocol.client import StreamHold
from service.protocol.messages import GenerateParams
from service.protocol.ops import Generate
from tests.hardening.conftest import KEY_A, KEYS, auth
from tests.service.conftest import LM, ClientFactory, app_of


def test_the_replica_cap_counts_everyone_and_the_key_cap_each_owner() -> None:
    slots = StreamSlots(max_open=3, max_per_owner=2)
    slots.acquire("a")
    slots.acquire("a")
    with pytest.raises(StreamLimit) as limit:
        slots.acquire("a")
    assert limit.value.status == 429 and limit.value.headers == {"Retry-After": "1"}
    slots.acquire(None)  # keys off: only the replica's cap
    with pytest.raises(Overloaded) as full:
        slots.acquire("b")
    assert "RNNSERVE_MAX_OPEN_STREAMS" in full.value.message
    assert slots.open == 3 and slots.held_by("a") == 2 and slots.held_by("b") == 0
    slots.release("a")
    slots.acquire("b")
    slots.release("a")
    slots.release("b")
    slots.release(None)
    assert slots.open == 0 and slots.held_by("a") == 0


async def _until(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not cond():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)


def _engine_calls(engine: Engine) -> float:
    """onnxruntime calls (prefill and decode batches) the LM's scheduler has made."""
    assert engine.metrics is not None
    calls = 0.0
    for kind in ("prefill", "decode"):
        labels = {"model": LM, "kind": kind}
        calls += engine.metrics.registry.get_sample_value("rnnserve_batch_size_count", labels) or 0
    return calls


@pytest.mark.parametrize("transport", ["zmq", "inprocess"])
async def test_a_generation_takes_its_requests_slot_and_is_refused_before_it_starts(
    make_client: ClientFactory, transport: str
) -> None:
    """An HTTP stream's slot goes to the engine with its generation (no frame or round trip of
    its own): every generation of the request shares it, it is held until the request lets go,
    and a generation under a refused slot raises the slot's error before any work."""
    params = GenerateParams(prompt="ab", max_tokens=5)
    async with make_client(
        engine_transport=transport, max_open_streams=2, max_streams_per_key=1
    ) as c:
        app = app_of(c)
        client = app.state.services.client
        engine = app.state.local.engine
        slots: StreamSlots = app.state.local.slots

        async def generate_under(hold: StreamHold, n: int = 1) -> int:
            gens = await asyncio.gather(
                *(client.open(Generate(LM, params), hold) for _ in range(n))
            )
            results = [await g.collect() for g in gens]
            return sum(r.usage.completion_tokens for r in results)

        first = client.hold_stream("a")
        assert await generate_under(first, n=3) == 15  # three choices, one slot
        assert slots.open == 1 and slots.held_by("a") == 1  # until the request lets go
        with pytest.raises(StreamLimit):  # the key's cap, not the replica's
            await generate_under(client.hold_stream("a"))
        ws = client.hold_stream("b")
        await ws.confirmed()  # a WebSocket asks before it accepts
        refused = client.hold_stream(None)
        # the last decode step's metrics are posted to the loop after its stream finished: wait
        # for the engine thread to end that step, then one loop turn for the posted callback
        sched = engine.scheduler(LM)
        for _ in range(500):
            if sched.active_streams == 0 and sched.decoder.last_step is None:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.01)
        calls = _engine_calls(engine)
        assert calls > 0  # the probe sees the generations above
        with pytest.raises(Overloaded):
            await generate_under(refused)
        with pytest.raises(Overloaded):  # decided once: the same answer for the same slot
            await generate_under(refused)
        assert _engine_calls(engine) == calls  # nothing was prefilled or decoded
        assert await generate_under(ws) == 5  # the WebSocket's generations use its slot
        for hold in (first, ws, refused):
            hold.release()
        await _until(lambda: slots.open == 0)
        assert slots.held_by("a") == slots.held_by("b") == 0


def test_a_request_of_several_rows_takes_one_slot_a_row() -> None:
    slots = StreamSlots(max_open=10, max_per_owner=4)
    slots.acquire("a", rows=3)
    with pytest.raises(StreamLimit) as limit:
        slots.acquire("a", rows=2)
    assert "needs 2 streams" in limit.value.message and "has 3 others" in limit.value.message
    with pytest.raises(Overloaded):
        slots.acquire(None, rows=8)
    slots.release("a", rows=3)
    assert slots.open == 0 and slots.held_by("a") == 0


@pytest.mark.parametrize("transport", ["zmq", "inprocess"])
async def test_a_completions_n_and_prompts_count_against_the_stream_caps(
    make_client: ClientFactory, transport: str
) -> None:
    """Issue 32.5: `n: 128` with two prompts held one slot and added 256 decode rows."""
    async with make_client(
        engine_transport=transport, api_keys=KEYS, max_streams_per_key=4, max_open_streams=6
    ) as c:
        slots: StreamSlots = app_of(c).state.local.slots
        body = {"model": LM, "prompt": ["to be", "or not"], "max_tokens": 3, "seed": 1}
        r = await c.post("/openai/v1/completions", json={**body, "n": 3}, headers=auth(KEY_A))
        assert r.status_code == 429, r.text  # 6 rows past the key's 4
        assert "this request needs 6 streams" in r.json()["error"]["message"]
        assert r.headers["Retry-After"] == "1"
        r = await c.post("/openai/v1/completions", json={**body, "n": 2}, headers=auth(KEY_A))
        assert r.status_code == 200, r.text  # 4 rows: within the cap
        assert len(r.json()["choices"]) == 4
        stream = {**body, "n": 2, "stream": True}
        r = await c.post("/openai/v1/completions", json=stream, headers=auth(KEY_A))
        assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
        await _until(lambda: slots.open == 0)
        assert slots.held_by("alice") == 0
