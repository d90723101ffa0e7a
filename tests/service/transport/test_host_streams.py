"""The engine host's generations (`host_streams.py`): a decode step's tokens leave a worker's
sink as one ids frame; stateless generations read together open as one batch, each one's end a
callback; a Cancel stops only its own; a refused slot and a dead worker."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from service.protocol.messages import GenerateParams, GenerationResult
from service.protocol.ops import Generate
from service.transport import wire
from tests.service.conftest import LM, ClientFactory, app_of
from tests.service.transport.conftest import Wired, hosted, sent_frames, until


async def test_a_steps_tokens_leave_as_one_ids_frame_in_order_with_the_frames_around_them(
    wired: Wired, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a decode step hands a worker's sink leaves as a `StepIds` frame, in the same message
    as the frames posted in the same loop iteration and in the order they were posted."""
    host = wired.host
    sent: list[list[wire.Frame]] = []
    monkeypatch.setattr(
        host._channel, "_send", lambda _ident, raw: sent.append(wire.frames_decoder.decode(raw))
    )
    sink = host.streams.sink(b"w")
    assert host.streams.sink(b"w") is sink  # one per worker
    sink(np.array([5, 6]), np.array([97, 98]), None)
    end = wire.Result(5, wire.answer(None))
    host._post(b"w", end)
    sink(np.array([6]), np.array([99]), np.array([6]))
    await until(lambda: bool(sent))
    (frames,) = sent
    assert frames == [wire.StepIds.of(np.array([5, 6]), np.array([97, 98])), end, frames[2]]
    step = frames[2]
    assert isinstance(step, wire.StepIds)
    assert step.arrays() == ([6], [99]) and step.ending() == {6}


def _gen(rid: int, max_tokens: int, model: str = LM) -> wire.Call:
    return wire.Call(rid, Generate(model, GenerateParams("ROMEO:", max_tokens, 1.0, seed=rid)))


def _open_batch_sizes(wired: Wired, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many generations each `open_many` call of the engine opens, from now on."""
    sizes: list[int] = []
    real = wired.local.open_many

    async def spy(ops: Any, routes: Any) -> Any:
        sizes.append(len(ops))
        return await real(ops, routes)

    monkeypatch.setattr(wired.local, "open_many", spy)
    return sizes


def _tokens_by_rid(sent: list[wire.Frame]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for f in sent:
        if isinstance(f, wire.StepIds):
            for rid, tok in zip(*f.arrays(), strict=True):
                out.setdefault(rid, []).append(tok)
    return out


async def test_generations_read_together_open_as_one_batch_and_end_with_no_task_each(
    wired: Wired, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stateless generations one worker asked for in one read open together (`open_many`):
    each is told `Opened` before any of its tokens, gets exactly its `max_tokens` ids, and
    its end is a `Result` of its own; an unknown model fails alone. No task stays per stream."""
    host = wired.host
    sizes = _open_batch_sizes(wired, monkeypatch)
    sent = sent_frames(host, monkeypatch)
    calls = [_gen(1, 5), _gen(2, 9), _gen(3, 4, model="nope"), _gen(4, 1)]
    host._read(b"w", wire.encoder.encode(calls))
    host._start_batches()  # (the end of a drain)
    ends = lambda: {f.rid for f in sent if isinstance(f, wire.Result | wire.Failed)}  # noqa: E731
    await until(lambda: ends() == {1, 2, 3, 4})
    assert sizes == [4]
    assert host._calls == {} and host._batches == {} and host.streams.running == {}
    opened = [i for i, f in enumerate(sent) if isinstance(f, wire.Opened)]
    assert [sent[i].rid for i in opened] == [1, 2, 4]  # type: ignore[attr-defined]
    first_ids = min(i for i, f in enumerate(sent) if isinstance(f, wire.StepIds))
    assert max(opened) < first_ids
    assert {r: len(t) for r, t in _tokens_by_rid(sent).items()} == {1: 5, 2: 9, 4: 1}
    by_rid = {f.rid: f for f in sent if isinstance(f, wire.Result | wire.Failed)}
    failed = by_rid[3]
    assert isinstance(failed, wire.Failed) and failed.error.code == "model_not_found"
    for rid, n in ((1, 5), (2, 9), (4, 1)):
        res = by_rid[rid]
        assert isinstance(res, wire.Result)
        result = wire.decode_result(GenerationResult, res.value)
        assert result.finish_reason == "length" and result.usage.completion_tokens == n
        assert result.seed == rid


async def test_the_end_of_an_earlier_stream_between_generations_does_not_split_their_batch(
    wired: Wired, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over HTTP a worker's message mixes new generations with the Cancels that end finished
    streams' slots: a Cancel of a call already started is applied as read, and the
    generations around it still open as one batch."""
    host = wired.host
    sizes = _open_batch_sizes(wired, monkeypatch)
    sent = sent_frames(host, monkeypatch)
    slot = host._slot(b"w", wire.SlotRef(7, None))  # an earlier stream's, still held
    frames = [_gen(1, 2), wire.Cancel(7), _gen(2, 2), wire.Cancel(8), _gen(3, 2)]
    host._read(b"w", wire.encoder.encode(frames))
    assert (b"w", 7) not in host._slots and slot._slots is None  # released as it was read
    host._start_batches()
    await until(lambda: sum(isinstance(f, wire.Result) for f in sent) == 3)
    assert sizes == [3]


async def test_a_batched_generation_gives_the_tokens_it_gives_alone(
    wired: Wired, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A seeded stream's tokens do not depend on how it was opened: in a batch of three over
    the wire, or alone through the in-process client."""
    host, local = wired.host, wired.local
    sent = sent_frames(host, monkeypatch)
    host._read(b"w", wire.encoder.encode([_gen(1, 12), _gen(2, 12), _gen(3, 12)]))
    host._start_batches()
    await until(lambda: sum(isinstance(f, wire.Result) for f in sent) == 3)
    alone = await local.open(Generate(LM, GenerateParams("ROMEO:", 12, 1.0, seed=2)))
    ids = [ev.token_id async for ev in alone.events() if hasattr(ev, "token_id")]
    assert _tokens_by_rid(sent)[2] == ids


@pytest.mark.parametrize("opened", [True, False], ids=["after-it-opened", "read-with-the-calls"])
async def test_a_cancel_stops_only_its_generation_and_answers_nothing(
    wired: Wired, monkeypatch: pytest.MonkeyPatch, opened: bool
) -> None:
    """Cancelled once it runs, its stream stops; cancelled in the read that asked for it, it
    never opens (the Cancel starts the batch first, then marks it gone). Its batch mate runs on."""
    host = wired.host
    sent = sent_frames(host, monkeypatch)
    host._read(b"w", wire.encoder.encode([_gen(1, 10_000), _gen(2, 3)]))
    if opened:
        host._start_batches()
        await until(lambda: (b"w", 1) in host.streams.running)
        stream = host.streams.running[(b"w", 1)].stream
    host._read(b"w", wire.encoder.encode(wire.Cancel(1)))
    if opened:
        assert stream.cancelled and (b"w", 1) not in host.streams.running
    await until(lambda: any(isinstance(f, wire.Result) and f.rid == 2 for f in sent))
    await until(lambda: wired.local.engine.scheduler(LM).active_streams == 0)
    answers = [f for f in sent if isinstance(f, wire.Result | wire.Failed | wire.Opened)]
    assert [f.rid for f in answers if f.rid == 1] == ([1] if opened else [])  # (Opened only)
    assert host.streams.running == {}


async def test_a_refused_slot_refuses_its_generation_in_a_batch_and_a_dead_worker_stops_the_rest(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with make_client(max_open_streams=1) as c:
        local = app_of(c).state.local
        async with hosted(local) as (host, _worker):
            sent = sent_frames(host, monkeypatch)
            calls = [
                wire.Call(1, Generate(LM, GenerateParams("a", 10_000)), wire.SlotRef(1, "o")),
                wire.Call(2, Generate(LM, GenerateParams("b", 10_000)), wire.SlotRef(2, "o")),
            ]
            host._read(b"w", wire.encoder.encode(calls))
            host._start_batches()
            await until(lambda: (b"w", 1) in host.streams.running)
            refused = [f for f in sent if isinstance(f, wire.Failed)]
            assert [f.rid for f in refused] == [2]
            assert refused[0].error.code in {"overloaded", "stream_limit"}
            # its two slots (one granted, one refused: kept until the worker's Cancel) and its
            # one open generation
            assert host.forget_worker(b"w") == 3
            assert host.streams.running == {} and local.slots.open == 0
            await until(lambda: local.engine.scheduler(LM).active_streams == 0)
