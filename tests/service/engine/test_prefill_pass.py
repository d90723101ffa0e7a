"""One prefill pass on its own (a real runner, the loop's callbacks collected in order): a job
it finishes resolves to exactly its alone result, a job with chunks left goes back holding the
state after exactly its chunk, and a failed call fails its bucket's jobs and puts none back."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from service.contract import load_artifact
from service.engine.pass_budget import PassBudget
from service.engine.prefill import Chunk, PrefillJob
from service.engine.prefill_pass import PrefillPass
from service.engine.runner import Runner
from service.engine.to_loop import reject, resolve
from service.errors import EngineError
from tests.conftest import FIXTURE_MODELS


def _pass(runner: Runner) -> tuple[PrefillPass, list[tuple[Any, ...]]]:
    posted: list[tuple[Any, ...]] = []
    p = PrefillPass(
        runner, PassBudget(0, 1 << 16, 4096), 1 << 16, lambda *a: posted.append(a), None
    )
    return p, posted


async def test_finished_jobs_resolve_exactly_and_unfinished_ones_go_back() -> None:
    manifest, onnx = load_artifact(FIXTURE_MODELS / "tiny-char-lstm")
    runner = Runner(manifest, onnx, ["CPUExecutionProvider"], 1)
    loop = asyncio.get_running_loop()
    short = PrefillJob(np.array([5, 6, 7], np.int64), None, loop.create_future())
    long = PrefillJob(np.arange(1, 9, dtype=np.int64), None, loop.create_future())
    p, posted = _pass(runner)
    back: list[PrefillJob] = []
    p.run([Chunk(short, short.tokens, None), Chunk(long, long.tokens[:4], None)], back.extend)
    assert back == [long] and long.done == 4 and long.states is not None
    ((fn, items),) = posted
    assert fn is resolve and [f for f, _ in items] == [short.future]
    logits, rows = items[0][1]
    init = manifest.init_states(1)
    alone, alone_rows = runner.run(short.tokens[None, :], np.array([3], np.int32), init)
    assert np.array_equal(logits, alone[0])
    assert all(np.array_equal(a, b) for a, b in zip(rows, alone_rows, strict=True))
    _, half = runner.run(long.tokens[None, :4], np.array([4], np.int32), init)
    assert all(np.array_equal(a, b) for a, b in zip(long.states, half, strict=True))


async def test_a_failed_call_fails_its_bucket_and_puts_nothing_back() -> None:
    manifest, onnx = load_artifact(FIXTURE_MODELS / "tiny-char-lstm")
    runner = Runner(manifest, onnx, ["CPUExecutionProvider"], 1)

    def boom(*_: Any) -> Any:
        raise RuntimeError("injected")

    runner.run = boom  # type: ignore[method-assign]
    job = PrefillJob(np.array([1, 2], np.int64), None, asyncio.get_running_loop().create_future())
    p, posted = _pass(runner)
    back: list[PrefillJob] = []
    p.run([Chunk(job, job.tokens[:1], None)], back.extend)
    assert back == []
    ((fn, futures, err),) = posted
    assert fn is reject and futures == [job.future] and isinstance(err, EngineError)
