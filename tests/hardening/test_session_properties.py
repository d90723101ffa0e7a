"""Property (hypothesis, bounded): any interleaving of feeds, resets and generates, with
idempotency keys and retries (some racing their original), leaves a session in exactly the state
of applying each DISTINCT request once, in arrival order; and every retry returns the result of
its original."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.engine.engine import Engine
from service.engine.registry import Registry
from service.engine.scheduler import SchedulerConfig
from service.protocol.messages import GenerateParams, NextTokens
from service.protocol.ops import (
    CreateSession,
    DeleteSession,
    ExportState,
    Feed,
    Reset,
    SessionGenerate,
)
from service.sessions import MemoryStore, decode_state
from service.sessions.service import SessionService
from tests.service.conftest import LM

GRU = "tiny-char-gru"  # a huge or NaN state turns a GRU's outputs NaN (an LSTM's, here, not)


@dataclass(frozen=True)
class Op:
    kind: str  # feed | reset | generate
    arg: str | int  # text for a feed, seed for a generate
    key: str | None

    async def apply(self, svc: SessionService, sid: str) -> dict[str, Any]:
        """The typed result, as plain data (compared field by field below)."""
        if self.kind == "feed":
            assert isinstance(self.arg, str)
            return msgspec.to_builtins(await svc.feed(Feed(sid, self.arg, 3, None, self.key, None)))
        if self.kind == "reset":
            return msgspec.to_builtins(await svc.reset(Reset(sid, None, self.key, None)))
        assert isinstance(self.arg, int)
        gen = await svc.open_generation(
            SessionGenerate(
                sid,
                GenerateParams(max_tokens=4, seed=self.arg, temperature=1.0),
                None,
                self.key,
                None,
            )
        )
        try:
            return msgspec.to_builtins(await gen.collect())
        finally:
            await gen.aclose()


texts = st.text(alphabet="abcde ,.\n", min_size=1, max_size=6)
op = st.one_of(
    st.builds(Op, st.just("feed"), texts, st.none()),
    st.builds(Op, st.just("reset"), st.just(0), st.none()),
    st.builds(Op, st.just("generate"), st.integers(0, 3), st.none()),
)


@st.composite
def schedules(draw: st.DrawFn) -> list[tuple[Op, bool]]:
    """Ops in arrival order; each may carry a key; some keyed ops are sent again later (a
    retry: same key, same body), the flag says whether it is a retry."""
    ops = draw(st.lists(op, min_size=1, max_size=7))
    out: list[tuple[Op, bool]] = []
    keyed: list[Op] = []
    for i, o in enumerate(ops):
        if draw(st.booleans()):
            o = Op(o.kind, o.arg, f"k{i}")
            keyed.append(o)
        out.append((o, False))
        if keyed and draw(st.integers(0, 3)) == 0:
            out.append((draw(st.sampled_from(keyed)), True))
    return out


@pytest.fixture(scope="module")
def world(registry: Registry) -> Iterator[tuple[asyncio.AbstractEventLoop, SessionService]]:
    loop = asyncio.new_event_loop()
    models = {n: registry.models[n] for n in (LM, GRU)}
    engine = Engine(Registry(models), SchedulerConfig(max_wait_ms=0.5))
    loop.run_until_complete(_start(engine))
    svc = SessionService(
        engine, MemoryStore(10_000), default_ttl_s=600, max_ttl_s=600, idempotency_ttl_s=600
    )
    yield loop, svc
    loop.run_until_complete(engine.close(1))
    loop.close()


async def _start(engine: Engine) -> None:
    engine.start()


async def _state(svc: SessionService, sid: str) -> tuple[Any, ...]:
    blob = decode_state((await svc.export_state(ExportState(sid, None))).state)
    return (
        blob.version,
        blob.pending,
        blob.tokens_seen,
        [a.tobytes() for a in blob.states],
        None if blob.logits is None else blob.logits.tobytes(),
    )


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    strip = {"replayed", "session_id", "created_at", "expires_at"}  # per-session, per-time
    return {k: v for k, v in a.items() if k not in strip} == {
        k: v for k, v in b.items() if k not in strip
    }


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(schedule=schedules(), concurrent=st.booleans())
def test_each_distinct_request_applies_once_in_arrival_order(
    world: tuple[asyncio.AbstractEventLoop, SessionService],
    schedule: list[tuple[Op, bool]],
    concurrent: bool,
) -> None:
    loop, svc = world

    async def run() -> None:
        sid = (await svc.create(CreateSession(LM, None, None, None, None))).session_id
        ref = (await svc.create(CreateSession(LM, None, None, None, None))).session_id
        # the system under test: everything sent at once (arrival order = send order), or
        # one after another
        if concurrent:
            tasks = [asyncio.create_task(o.apply(svc, sid)) for o, _ in schedule]
            results = await asyncio.gather(*tasks)
        else:
            results = [await o.apply(svc, sid) for o, _ in schedule]
        # the model: each distinct request once, in order, on a fresh session, no keys
        expected: dict[str, dict[str, Any]] = {}
        for (o, retry), got in zip(schedule, results, strict=True):
            if o.key is not None and o.key in expected:
                assert retry and got.get("replayed") is True
                assert _same(got, expected[o.key])  # the original's result
                continue
            want = await Op(o.kind, o.arg, None).apply(svc, ref)
            assert got["replayed"] is False
            assert _same(got, want)
            if o.key is not None:
                expected[o.key] = got
        assert await _state(svc, sid) == await _state(svc, ref)
        for s in (sid, ref):
            await svc.delete(DeleteSession(s, None))

    loop.run_until_complete(asyncio.wait_for(run(), 30))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
header_keys = st.sampled_from(
    ["model", "model_sha256", "version", "pending", "tokens_seen", "arrays"]
)


@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    edits=st.one_of(st.just([]), st.lists(st.tuples(header_keys, json_values), max_size=3)),
    model=st.sampled_from([LM, GRU]),
    poison=st.one_of(
        st.none(),
        st.sampled_from([float("nan"), float("inf"), -float("inf"), 3e38, -3e38, 1.5, 0.5]),
        st.floats(allow_nan=True, allow_infinity=True),
    ),
)
def test_any_imported_state_is_accepted_usable_or_refused_as_invalid_state(
    world: tuple[asyncio.AbstractEventLoop, SessionService],
    edits: list[tuple[str, object]],
    model: str,
    poison: float | None,
) -> None:
    """A genuine export with its header fields replaced by any JSON (NaN and infinities
    included) or a state value set to any float: the import is refused with InvalidState
    naming `state`, or accepted, and then the session feeds and generates with finite,
    JSON-encodable results."""
    import json as _json

    import numpy as np

    from service.errors import InvalidState
    from service.sessions.blob import encode_state
    from tests.hardening.test_state_import import _reframe

    loop, svc = world

    async def run() -> None:
        sid = (await svc.create(CreateSession(model, None, None, None, None))).session_id
        await svc.feed(Feed(sid, "to be", 3, None, None, None))
        data = (await svc.export_state(ExportState(sid, None))).state
        if poison is not None:
            blob = decode_state(data)
            with np.errstate(over="ignore"):  # a float64 beyond float32 becomes inf
                blob.states[0][...] = np.float32(poison)
            names = [s.name for s in svc.engine.model(model).manifest.io.states]
            data = encode_state(blob, names)

        def edit(h: str) -> str:
            header = _json.loads(h)
            for k, v in edits:
                header[k] = v
            return _json.dumps(header, allow_nan=True)

        data = _reframe(data, edit)
        try:
            info = await svc.create(CreateSession(None, None, None, data, None))
        except InvalidState as e:
            assert e.field == "state"
            return
        new = info.session_id
        fed = await svc.feed(Feed(new, "or not", 3, None, None, None))
        gen = await svc.open_generation(
            SessionGenerate(new, GenerateParams(max_tokens=4, seed=1), None, None, None)
        )
        try:
            done = await gen.collect()
        finally:
            await gen.aclose()
        _json.dumps(msgspec.to_builtins([fed, done]), allow_nan=False)  # finite everywhere
        assert isinstance(fed.output, NextTokens)
        assert np.isfinite([p.prob for p in fed.output.next]).all()
        await svc.delete(DeleteSession(new, None))

    loop.run_until_complete(asyncio.wait_for(run(), 30))
