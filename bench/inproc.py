"""In-process measurements (no HTTP), each in a fresh process of the project's venv:

* `overhead`: the scheduler's decode step (sampling, bookkeeping, events, one onnxruntime call)
  vs a bare `InferenceSession.run` of the same (B, 1) step with the state chained, at B = 1, 64,
  256, in interleaved rounds (the median round's ratio);
* `capacity`: memory per idle session in the in-memory store (created and fed through the
  session service, as over HTTP) vs the raw state bytes, at 100k sessions.

    python -m bench.inproc overhead MODEL_DIR OUT.json [SECONDS]
    python -m bench.inproc capacity MODELS_ROOT MODEL_NAME SESSIONS OUT.json
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

# as `service.server` does for the server: single-threaded BLAS, set before numpy loads
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

from bench.procs import pss_bytes


def _pss() -> int:
    return pss_bytes([os.getpid()])


def bare_step_s(runner: Any, B: int, seconds: float) -> float:
    """Seconds per bare onnxruntime step at batch B (state chained, tokens fixed)."""
    sess = runner.session
    io = runner.manifest.io
    states = runner.manifest.init_states(B)
    tokens = np.random.default_rng(0).integers(0, 60, (B, 1)).astype(np.int64)
    lengths = np.ones(B, np.int32)
    names_in, names_out = io.input_names(), io.output_names()
    for _ in range(20):
        out = sess.run(names_out, dict(zip(names_in, (tokens, lengths, *states), strict=True)))
        states = out[1:]
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        out = sess.run(names_out, dict(zip(names_in, (tokens, lengths, *states), strict=True)))
        states = out[1:]
        n += 1
    return (time.perf_counter() - t0) / n


async def engine_step_s(runner: Any, B: int, seconds: float) -> float:
    """Seconds per decode step of the real scheduler with B streams (consumers draining)."""
    from service.engine.sampling import SamplingParams
    from service.engine.scheduler import Scheduler, SchedulerConfig
    from service.engine.stream import Stream
    from service.metrics import Metrics
    from service.protocol.events import TokenEvent

    sched = Scheduler(runner, SchedulerConfig(max_streams=max(B, 256)), Metrics())
    sched.start()
    vocab = [chr(65 + i % 50) for i in range(4096)]
    K = runner.session.get_outputs()[0].shape[-1]
    K = K if isinstance(K, int) else 65
    rng = np.random.default_rng(0)
    big = 10**9
    streams = [
        Stream(
            SamplingParams(1.0, 0, 1.0, seed=i, max_tokens=big),
            rng.standard_normal(K).astype(np.float32),
            runner.manifest.init_states(1),
            vocab.__getitem__,
        )
        for i in range(B)
    ]
    marks: list[float] = []

    async def consume(s: Stream, record: bool) -> None:
        async for ev in s.iter_events():
            if record and isinstance(ev, TokenEvent):
                marks.append(time.perf_counter())

    tasks = [asyncio.create_task(consume(s, i == 0)) for i, s in enumerate(streams)]
    for s in streams:
        sched.join(s)
    await asyncio.sleep(1.0)  # warm-up
    n0, t0 = len(marks), time.perf_counter()
    await asyncio.sleep(seconds)
    n1, t1 = len(marks), time.perf_counter()
    for s in streams:
        s.cancel()
    await sched.close(1.0)
    for t in tasks:
        t.cancel()
    return (t1 - t0) / max(1, n1 - n0)


def _run_loop(coro: Any) -> Any:
    """Run on uvloop when installed: uvicorn's `loop="auto"` serves on it."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def overhead(model_dir: Path, seconds: float, rounds: int = 5) -> dict[str, Any]:
    """Per batch size, `rounds` rounds of bare, engine, bare, engine, ..., bare: each engine
    round is divided by the mean of the bare rounds either side of it, so a slow patch of a
    shared machine moves both. The reported ratio is the median round's."""
    from service.contract import load_artifact
    from service.engine.runner import Runner
    from service.settings import Settings

    # the server's own knobs (RNNSERVE_*), so the engine is measured as `serve` runs it
    settings = Settings()
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)

    manifest, onnx = load_artifact(model_dir)
    runner = Runner(manifest, onnx, intra_op_threads=settings.intra_op_threads)
    rows = []
    for B in (1, 64, 256):
        bare = [bare_step_s(runner, B, seconds)]
        eng: list[float] = []
        for _ in range(rounds):
            eng.append(_run_loop(engine_step_s(runner, B, seconds)))
            bare.append(bare_step_s(runner, B, seconds))
        ratios = [e / ((b0 + b1) / 2) for e, b0, b1 in zip(eng, bare, bare[1:], strict=False)]
        rows.append(
            {
                "batch": B,
                "rounds": rounds,
                "bare_ms": float(np.median(bare)) * 1e3,
                "engine_ms": float(np.median(eng)) * 1e3,
                "ratio": float(np.median(ratios)),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "bare_spread": (max(bare) - min(bare)) / float(np.median(bare)),
            }
        )
    return {"rows": rows}


async def _capacity(root: Path, name: str, n: int) -> dict[str, Any]:
    from service.engine.engine import Engine
    from service.engine.registry import load_registry
    from service.engine.scheduler import SchedulerConfig
    from service.protocol.ops import CreateSession, Feed
    from service.sessions import MemoryStore
    from service.sessions.service import SessionService

    reg = load_registry(root)
    engine = Engine(reg, SchedulerConfig(max_batch_size=256, max_queue=1 << 20))
    engine.start()
    store = MemoryStore(n + 10)
    svc = SessionService(engine, store, default_ttl_s=3600, max_ttl_s=86400, idempotency_ttl_s=3600)
    m = reg.get(name)
    raw = sum(a.nbytes for a in m.manifest.init_states(1))
    # warm every code path once, then measure
    first = await svc.create(CreateSession(name, None, None, None, None))
    await svc.feed(Feed(first.session_id, "ab", 5, None, None, None))
    gc.collect()
    before = _pss()
    t0 = time.perf_counter()
    chunk = 1000
    first_n = max(chunk, n // 10 // chunk * chunk)
    at_first = before
    for i in range(0, n, chunk):
        infos = [
            await svc.create(CreateSession(name, None, None, None, None))
            for _ in range(min(chunk, n - i))
        ]
        await asyncio.gather(
            *(svc.feed(Feed(x.session_id, "a", 5, None, None, None)) for x in infos)
        )
        if i + chunk == first_n:
            gc.collect()
            at_first = _pss()
    elapsed = time.perf_counter() - t0
    gc.collect()
    after = _pss()
    # the marginal cost: the PSS slope between n/10 and n sessions, so fixed start-up costs
    # (the allocator's and onnxruntime's first arenas) are not charged per session
    per = (after - at_first) / (n - first_n) if n > first_n else (after - before) / n
    rec = await store.get(first.session_id)
    logits_bytes = rec.logits.nbytes if rec.logits is not None else 0
    await engine.close(1.0)
    return {
        "sessions": n,
        "raw_state_bytes": raw,
        "logits_bytes": logits_bytes,
        "bytes_per_session": per,
        "bytes_per_session_average": (after - before) / n,
        "ratio": per / raw,
        "create_feed_s": elapsed,
        "pss_before_mb": before / 2**20,
        "pss_after_mb": after / 2**20,
    }


def main() -> None:
    what = sys.argv[1]
    if what == "overhead":
        secs = float(sys.argv[4]) if len(sys.argv) > 4 else 3.0
        res = overhead(Path(sys.argv[2]), secs)
        out = sys.argv[3]
    else:
        res = asyncio.run(_capacity(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])))
        out = sys.argv[5]
    Path(out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
