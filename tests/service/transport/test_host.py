"""The engine process's end of the wire: it serves any operation without naming it, skips what
it cannot decode, sends a step's tokens as arrays, and forgets a dead worker's calls and stream slots."""

from __future__ import annotations

import asyncio
import gc
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
import zmq.asyncio

from service.protocol.messages import FeedResult, GenerateParams, GenerationResult
from service.protocol.ops import CreateSession, Feed, Generate, GetSession
from service.transport import wire
from service.transport.host import EngineHost
from service.transport.remote import worker_identity
from tests.service.conftest import LM, ClientFactory, app_of
from tests.service.transport.conftest import Wired, hosted, until


async def test_a_dead_workers_slots_are_freed_by_forget_worker(
    make_client: ClientFactory,
) -> None:
    async with make_client(max_open_streams=4) as c:
        local = app_of(c).state.local
        async with hosted(local) as (host, worker):
            for _ in range(3):
                await worker.hold_stream("o").confirmed()
            assert local.slots.open == 3
            # the supervisor's word that the worker died (SIGKILL: it could not release)
            assert host.forget_worker(worker_identity(os.getpid())) == 3
            await until(lambda: local.slots.open == 0)


async def test_a_frame_it_cannot_decode_is_skipped_and_serving_goes_on(
    wired: Wired,
) -> None:
    local = wired.local
    host = wired.host
    worker = wired.worker
    ctx = zmq.asyncio.Context()
    stranger = ctx.socket(zmq.DEALER)
    stranger.setsockopt(zmq.LINGER, 0)
    stranger.connect(host.address)
    try:
        await stranger.send(b"\xc1 not msgpack")
        info = await worker.call(CreateSession(LM, "h1", None, None, None))
        fed = await worker.call(Feed(info.session_id, "to be", 3, None, None, None))
        assert fed.version == 1
        assert (await local.call(GetSession("h1", None))).version == 1
    finally:
        stranger.close(linger=0)
        ctx.term()


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
    sink = host._sink(b"w")
    assert host._sink(b"w") is sink  # one per worker
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


async def test_frames_sent_as_the_socket_closes_are_reported_not_lost_in_a_future(
    make_client: ClientFactory, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """A decode step's tokens posted while the engine shuts down: the failed send is logged,
    not raised into the loop, and leaves nothing unretrieved behind it."""
    async with make_client() as c:
        host = EngineHost(app_of(c).state.local, f"ipc://{tmp_path}/engine.sock")
        host._channel.sock.close(linger=0)
        unretrieved: list[object] = []
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: unretrieved.append(ctx))
        try:
            host._channel._send(b"gone", wire.encoder.encode([wire.Cancel(1)]))
            await asyncio.sleep(0)  # (a callback on a pending send runs here)
            gc.collect()
        finally:
            loop.set_exception_handler(None)
        host._ctx.term()
    assert unretrieved == []
    assert "frames not sent" in caplog.text


async def test_feeds_read_together_run_as_one_batch_each_answered_on_its_own(
    wired: Wired, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Feeds from one worker read in one go are one batch (`SessionService.feed_batch`): each
    answered under its own rid, in order on one session, errors its own; a Cancel read after
    them marks only its feed gone (not answered, not committed)."""
    host, local = wired.host, wired.local
    for sid in ("b1", "b2"):
        await local.call(CreateSession(LM, sid, None, None, None))
    sizes: list[int] = []
    real = local.sessions.feed_batch

    async def spy(ops: Any, reply: Any, gone: Any) -> None:
        sizes.append(len(ops))
        await real(ops, reply, gone)

    monkeypatch.setitem(local._batchers, Feed, spy)
    sent = _sent(host, monkeypatch)
    calls = [("b1", "ab"), ("b2", "x"), ("b1", "cd"), ("nope", "z")]
    # one message of four calls (as a worker sends what one loop iteration made), then the
    # Cancel alone (it starts the batch, then cancels)
    feeds = [
        wire.Call(rid, Feed(sid, text, 3, None, None, None))
        for rid, (sid, text) in enumerate(calls, 1)
    ]
    host._read(b"w", wire.encoder.encode(feeds))
    host._read(b"w", wire.encoder.encode(wire.Cancel(2)))
    await until(lambda: len(sent) == 3)
    assert sizes == [4]
    by_rid = {f.rid: f for f in sent if isinstance(f, wire.Result | wire.Failed)}
    assert set(by_rid) == {1, 3, 4}
    first, second, missing = by_rid[1], by_rid[3], by_rid[4]
    assert isinstance(first, wire.Result) and isinstance(second, wire.Result)
    assert wire.decode_result(FeedResult, first.value).version == 1
    assert wire.decode_result(FeedResult, second.value).version == 2
    assert isinstance(missing, wire.Failed) and missing.error.code == "session_not_found"
    assert (await local.call(GetSession("b2", None))).version == 0  # its caller went
    assert host._members == {} and host._batches == {}


async def test_a_lone_feed_runs_as_any_call_not_as_a_batch(
    wired: Wired, monkeypatch: pytest.MonkeyPatch
) -> None:
    host, local = wired.host, wired.local
    await local.call(CreateSession(LM, "l1", None, None, None))
    sizes: list[int] = []

    async def spy(ops: Any, reply: Any, gone: Any) -> None:  # pragma: no cover (must not run)
        sizes.append(len(ops))

    monkeypatch.setitem(local._batchers, Feed, spy)
    sent = _sent(host, monkeypatch)
    host._read(b"w", wire.encoder.encode(wire.Call(1, Feed("l1", "a", 3, None, None, None))))
    host._start_batches()  # (the end of a drain)
    await until(lambda: len(sent) == 1)
    assert sizes == [] and isinstance(sent[0], wire.Result)


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
    sent = _sent(host, monkeypatch)
    calls = [_gen(1, 5), _gen(2, 9), _gen(3, 4, model="nope"), _gen(4, 1)]
    host._read(b"w", wire.encoder.encode(calls))
    host._start_batches()  # (the end of a drain)
    ends = lambda: {f.rid for f in sent if isinstance(f, wire.Result | wire.Failed)}  # noqa: E731
    await until(lambda: ends() == {1, 2, 3, 4})
    assert sizes == [4]
    assert host._calls == {} and host._batches == {} and host._open == {}
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
    sent = _sent(host, monkeypatch)
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
    sent = _sent(host, monkeypatch)
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
    sent = _sent(host, monkeypatch)
    host._read(b"w", wire.encoder.encode([_gen(1, 10_000), _gen(2, 3)]))
    if opened:
        host._start_batches()
        await until(lambda: (b"w", 1) in host._open)
        stream = host._open[(b"w", 1)].stream
    host._read(b"w", wire.encoder.encode(wire.Cancel(1)))
    if opened:
        assert stream.cancelled and (b"w", 1) not in host._open
    await until(lambda: any(isinstance(f, wire.Result) and f.rid == 2 for f in sent))
    await until(lambda: wired.local.engine.scheduler(LM).active_streams == 0)
    answers = [f for f in sent if isinstance(f, wire.Result | wire.Failed | wire.Opened)]
    assert [f.rid for f in answers if f.rid == 1] == ([1] if opened else [])  # (Opened only)
    assert host._open == {}


async def test_a_refused_slot_refuses_its_generation_in_a_batch_and_a_dead_worker_stops_the_rest(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with make_client(max_open_streams=1) as c:
        local = app_of(c).state.local
        async with hosted(local) as (host, _worker):
            sent = _sent(host, monkeypatch)
            calls = [
                wire.Call(1, Generate(LM, GenerateParams("a", 10_000)), wire.SlotRef(1, "o")),
                wire.Call(2, Generate(LM, GenerateParams("b", 10_000)), wire.SlotRef(2, "o")),
            ]
            host._read(b"w", wire.encoder.encode(calls))
            host._start_batches()
            await until(lambda: (b"w", 1) in host._open)
            refused = [f for f in sent if isinstance(f, wire.Failed)]
            assert [f.rid for f in refused] == [2]
            assert refused[0].error.code in {"overloaded", "stream_limit"}
            # its two slots (one granted, one refused: kept until the worker's Cancel) and its
            # one open generation
            assert host.forget_worker(b"w") == 3
            assert host._open == {} and local.slots.open == 0
            await until(lambda: local.engine.scheduler(LM).active_streams == 0)


def _sent(host: EngineHost, monkeypatch: pytest.MonkeyPatch) -> list[wire.Frame]:
    """Every frame the host sends from now on, in order (its socket bypassed)."""
    sent: list[wire.Frame] = []
    monkeypatch.setattr(
        host._channel, "_send", lambda _ident, raw: sent.extend(wire.frames_decoder.decode(raw))
    )
    return sent
