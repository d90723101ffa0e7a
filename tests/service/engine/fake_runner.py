"""A runner at the scheduler's seam (no onnxruntime), and the helpers the scheduler's and the
decode step's tests share."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.contract import load_manifest
from service.engine.sampling import SamplingParams
from service.engine.scheduler import Scheduler, SchedulerConfig
from service.engine.stream import DoneEvent, ErrorEvent, Stream
from service.protocol.events import TokenEvent
from tests.conftest import FIXTURE_MODELS


class FakeRunner:
    """State h accumulates the sum of real tokens; logits point at (h mod K)."""

    def __init__(self) -> None:
        self.manifest = load_manifest(FIXTURE_MODELS / "tiny-char-gru")
        self.device = "cpu"
        self.calls: list[tuple[int, int]] = []  # (B, T) per call
        self.fail = False
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # set as a call begins (before the gate)

    def run(
        self, tokens: np.ndarray, lengths: np.ndarray, states: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        self.entered.set()
        self.gate.wait(5)
        self.calls.append(tokens.shape)
        if self.fail:
            raise RuntimeError("boom")
        mask = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
        add = (tokens * mask).sum(axis=1).astype(np.float32)  # (B,)
        h = states[0] + add[None, :, None]
        k = 58
        logits = np.full((tokens.shape[0], k), -10.0, np.float32)
        top = np.nan_to_num(h[0, :, 0], nan=0.0, posinf=0.0, neginf=0.0)  # (a poisoned row)
        logits[np.arange(tokens.shape[0]), top.astype(int) % k] = 10.0
        return logits, [h]


def make(runner: FakeRunner, **cfg: Any) -> Scheduler:
    # (no time bound on a pass unless a test asks: a fake runner's cost a token says nothing)
    base = {"max_wait_ms": 5.0, "prefill_pass_ms": 0.0}
    s = Scheduler(runner, SchedulerConfig(**{**base, **cfg}))  # type: ignore[arg-type]
    s.start()
    return s


def new_stream(runner: FakeRunner, max_tokens: int, seed: int = 0) -> Stream:
    params = SamplingParams(temperature=0.0, top_k=0, top_p=1.0, seed=seed, max_tokens=max_tokens)
    logits = np.zeros(58, np.float32)
    logits[1] = 1
    return Stream(params, logits, runner.manifest.init_states(1), str)


async def drain(stream: Stream) -> tuple[list[TokenEvent], DoneEvent | ErrorEvent]:
    toks: list[TokenEvent] = []
    async for ev in stream.iter_events():
        if isinstance(ev, TokenEvent):
            toks.append(ev)
        else:
            return toks, ev
    raise AssertionError("no final event")
