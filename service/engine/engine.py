"""The engine facade: models, schedulers, encoding, prediction and generation (the running
generation a caller holds is `generation.py`'s; what logits say, `outputs.py`).

It speaks numpy and plain Python; the API layer translates HTTP/WebSocket to these calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from service import tracing
from service.contract.model_settings import EffectiveSettings, effective
from service.engine.generation import Generation
from service.engine.outputs import output
from service.engine.prefill import StateRows
from service.engine.registry import LoadedModel, Registry
from service.engine.sampling import SamplingParams
from service.engine.scheduler import Scheduler, SchedulerConfig
from service.engine.stops import StopAutomata, StopAutomaton
from service.engine.stream import Route, Stream
from service.engine.traced import DecodeTrace
from service.errors import EngineError, InvalidInput, ModelNotFound
from service.metrics import Metrics
from service.protocol.catalog import Catalog
from service.protocol.messages import GenerateParams, Output
from service.sessions.bounds import require_finite

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext


class Engine:
    def __init__(self, registry: Registry, config: SchedulerConfig, metrics: Metrics | None = None):
        self.registry = registry
        self.config = config  # the server's; a model's settings.json goes over it (`config_of`)
        self.metrics = metrics
        self.schedulers: dict[str, Scheduler] = {}  # by loaded instance (`LoadedModel.ident`)
        self._stops: dict[str, StopAutomata] = {}  # each model's stop automata, by stop list
        self.intra_op_threads = 0  # the server's (shown in a model's settings in force)
        # unseeded requests' seeds: a generator seeded once from the OS (a seed is returned to
        # its caller to reproduce the stream, not a secret), where `secrets` asked the kernel
        # each time: ~12 us a stream on this VM (py-spy, 256 streams)
        self._seeds = random.Random()
        # called when the models served change (a load or an unload): the catalogs follow
        self.on_change: list[Callable[[], None]] = []

    def start(self) -> None:
        """Create the schedulers inside the running loop."""
        for m in self.registry.all():
            self.start_model(m)

    def start_model(self, m: LoadedModel) -> None:
        """`m`'s engine thread (before it joins the registry: nothing routes to it yet)."""
        # one label per model name in the metrics; a second version serving beside the first
        # is labelled name@version (the dashboards' series stay the default version's)
        label = m.name if all(s.name != m.name for s in self.schedulers.values()) else m.key
        sched = Scheduler(m.runner, self.config_of(m), self.metrics, label)
        self.schedulers[m.ident] = sched
        sched.start()
        if self.metrics is not None:
            self.metrics.model_info.labels(*self._info_labels(m)).set(1)

    @staticmethod
    def _info_labels(m: LoadedModel) -> tuple[str, ...]:
        man = m.manifest
        return (
            man.name,
            man.version,
            man.task,
            man.cell,
            m.sha256,
            m.runner.provider,
            m.variant or "fp32",
        )

    async def stop_model(self, m: LoadedModel, timeout: float) -> None:
        """Let `m`'s work in flight finish (up to `timeout`), then end its engine thread."""
        sched = self.schedulers.pop(m.ident, None)
        self._stops.pop(m.ident, None)
        if sched is not None:
            await sched.close(timeout)
            sched.release()
        if self.metrics is not None and not any(
            o.sha256 == m.sha256 and o.version == m.version for o in self.registry.all()
        ):
            with contextlib.suppress(KeyError):
                self.metrics.model_info.remove(*self._info_labels(m))

    def busy(self, m: LoadedModel) -> bool:
        """`m`'s engine thread holds work (a queued prefill, a stream decoding)."""
        sched = self.schedulers.get(m.ident)
        return sched is not None and bool(sched.queue_depth or sched.active_streams)

    def config_of(self, m: LoadedModel) -> SchedulerConfig:
        own = m.settings
        return dataclasses.replace(
            self.config,
            max_batch_size=own.max_batch_size or self.config.max_batch_size,
            max_wait_ms=self.config.max_wait_ms if own.max_wait_ms is None else own.max_wait_ms,
            max_streams=own.max_streams or self.config.max_streams,
        )

    def settings_of(self, m: LoadedModel) -> EffectiveSettings:
        c = self.config
        return effective(
            m.settings,
            c.max_batch_size,
            c.max_wait_ms,
            c.max_streams,
            self.intra_op_threads,
            m.variant,
        )

    def catalog(self) -> Catalog:
        """What the API layer may know of the models serving, their settings in force included."""
        reg = self.registry

        def view(m: LoadedModel) -> Any:
            return dataclasses.replace(m.view, settings=self.settings_of(m).model_dump())

        # (a draining version stays in: a worker decodes its sessions' generations by its vocab;
        # one reloaded in place gives way to its new instance)
        views = {m.key: dataclasses.replace(view(m), draining=True) for m in reg.draining.values()}
        views |= {m.key: view(m) for vs in reg.versions.values() for m in vs.values()}
        return Catalog({n: views[m.key] for n, m in reg.models.items()}, dict(reg.failed), views)

    def changed(self) -> None:
        for fn in self.on_change:
            fn()

    async def close(self, timeout: float) -> None:
        await asyncio.gather(*(s.close(timeout) for s in self.schedulers.values()))

    def problems(self) -> dict[str, str]:
        """Each model whose engine thread has held work without moving for longer than
        `stall_timeout_s` (readiness says not ready while there is one)."""
        out = {}
        for sched in self.schedulers.values():
            stalled = sched.stalled_s()
            if stalled is not None and stalled > self.config.stall_timeout_s:
                out[sched.name] = (
                    f"the engine thread has not moved for {stalled:.0f} s with work waiting"
                )
        return out

    def model(self, ref: str) -> LoadedModel:
        """`name` (its default version) or `name@version`."""
        return self.registry.get(ref)

    def scheduler(self, ref: str) -> Scheduler:
        """The engine thread of `name` (its default version) or `name@version`."""
        return self._scheduler(self.registry.get(ref))

    def _scheduler(self, m: LoadedModel) -> Scheduler:
        sched = self.schedulers.get(m.ident)
        if sched is not None:
            return sched
        # `m` was unloaded between the request's lookup and now: its graph may still serve,
        # reloaded (same version, same graph, new settings)
        for other in self.registry.versions.get(m.name, {}).values():
            if other.sha256 == m.sha256 and other.ident in self.schedulers:
                return self.schedulers[other.ident]
        raise ModelNotFound(f"model version {m.key} is not loaded", field="model")

    async def prefill(
        self, m: LoadedModel, ids: list[int], states: StateRows | None
    ) -> tuple[np.ndarray, StateRows]:
        return await self._scheduler(m).prefill(ids, states)

    def submit(
        self,
        m: LoadedModel,
        work: Sequence[tuple[list[int], StateRows | None]],
        traces: Sequence[SpanContext | None] | None = None,
    ) -> list[asyncio.Future[tuple[np.ndarray, StateRows]]]:
        """Queue several prefills of `m` at once (`Scheduler.submit`)."""
        return self._scheduler(m).submit(work, traces)

    async def predict(self, name: str, rows: list[list[int]], top_k: int) -> list[Output | None]:
        """Each row of token ids (the API tokenized them) from a fresh state: its output."""
        m = self.model(name)
        self._require_work(rows, "inputs")
        done = await self._prefill_all(m, rows)
        return [output(m, logits, top_k) for logits, _ in done]

    async def logits(self, name: str, rows: list[list[int]]) -> np.ndarray:
        """Each row of ids prefilled from a fresh state, batched with everything waiting:
        logits (B, K) float32."""
        m = self.model(name)
        self._require_work(rows, "inputs")
        done = await self._prefill_all(m, rows)
        return np.stack([logits for logits, _ in done]).astype(np.float32)

    async def _prefill_all(
        self, m: LoadedModel, rows: list[list[int]]
    ) -> list[tuple[np.ndarray, StateRows]]:
        """Each row from a fresh state, batched with everything waiting; all or none: when one
        row fails (its batch's call, a full queue), the others are cancelled, so a long row's
        remaining chunks are dropped instead of run for an answer nobody will read."""
        tasks = [asyncio.ensure_future(self.prefill(m, ids, None)) for ids in rows]
        try:
            return await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            raise

    def _require_work(self, rows: list[list[int]], field: str) -> None:
        """One request's rows together bring at most `max_request_tokens`: however it is
        chunked, a request's work is its tokens, and this bounds what one can ask for."""
        total = sum(len(r) for r in rows)
        limit = self.config.max_request_tokens
        if total > limit:
            raise InvalidInput(
                f"{field} come to {total} tokens; at most {limit} per request "
                "(RNNSERVE_MAX_REQUEST_TOKENS)",
                field=field,
            )

    # -- generation -------------------------------------------------------------------------

    def sampling(self, m: LoadedModel, p: GenerateParams) -> SamplingParams:
        d = m.manifest.sampling
        return SamplingParams(
            temperature=d.temperature if p.temperature is None else p.temperature,
            top_k=(d.top_k or 0) if p.top_k is None else p.top_k,
            top_p=d.top_p if p.top_p is None else p.top_p,
            seed=self._seeds.getrandbits(53) if p.seed is None else p.seed,  # JSON-exact (< 2^53)
            max_tokens=d.max_tokens if p.max_tokens is None else p.max_tokens,
            stop=p.stop,
            logprobs=p.logprobs,
        )

    def stop_automaton(self, m: LoadedModel, stops: tuple[str, ...]) -> StopAutomaton | None:
        if not stops:
            return None
        automata = self._stops.get(m.ident)
        if automata is None:
            automata = self._stops[m.ident] = StopAutomata(m.view.vocab)
        return automata.get(stops)

    async def start_generation(
        self,
        m: LoadedModel,
        params: SamplingParams,
        ids: list[int],
        states: StateRows | None,
        logits: np.ndarray | None,
        route: Route | None = None,
        keep_final: bool = True,
    ) -> Stream:
        """Prefill `ids` (or prime an empty context), then join the decode batch, its tokens
        going by `route` when it has one (see `stream.Route`); `keep_final`: its end carries
        its logits and state rows (see `Stream.keep_final`)."""
        started = time.perf_counter()  # time to first token includes the prefill
        if not ids and logits is None:
            ids = m.tokenizer.encode(m.manifest.sampling.prime_text)
        if ids:  # (a prefill's outputs are checked as the engine makes them: finite.py)
            logits, states = await self.prefill(m, ids, states)
        assert logits is not None
        rows = states if states is not None else m.manifest.init_states(1)
        if not ids:
            # a row with non-finite numbers would sample garbage, and its overflow warnings
            # would fail the whole decode batch: it never joins (a session's state is checked
            # at import and at every commit; this guards whatever got past that)
            require_finite(m, [logits], rows)
        stream = self._stream(m, params, logits, rows, len(ids), started, route, keep_final)
        self._join(m, stream)
        return stream

    def _stream(
        self,
        m: LoadedModel,
        params: SamplingParams,
        logits: np.ndarray,
        rows: StateRows,
        prompt_tokens: int,
        started: float,
        route: Route | None,
        keep_final: bool = True,
    ) -> Stream:
        stream = Stream(
            params,
            logits,
            list(rows),
            m.view.vocab.__getitem__,
            created=started,
            max_backlog_bytes=self.config.stream_buffer_bytes,
            prompt_tokens=prompt_tokens,
            route=route,
            stop_automaton=self.stop_automaton(m, params.stop),
            keep_final=keep_final,
        )
        if tracing.enabled and (ctx := tracing.capture()) is not None:
            span = tracing.start("decode", ctx, {"rnnserve.model": m.key})
            stream.trace = DecodeTrace(span, self._scheduler(m).counts)
        return stream

    def _join(self, m: LoadedModel, stream: Stream) -> None:
        try:
            self._scheduler(m).join(stream)
        except BaseException as e:
            _refused(stream, e)
            raise

    async def generate(
        self, name: str, p: GenerateParams, route: Route | None = None
    ) -> Generation:
        """A stateless generation from a fresh state."""
        m = self.model(name)
        m.view.require_lm()
        ids = m.view.encode_full(p.prompt, "prompt") if p.prompt else []
        # (nothing commits a stateless generation's final state: keep_final False)
        params = self.sampling(m, p)
        stream = await self.start_generation(m, params, ids, None, None, route, False)
        return Generation(stream, m.name, key=m.key)

    async def generate_many(
        self, asks: Sequence[tuple[str, GenerateParams, Route | None]]
    ) -> list[Generation | Exception]:
        """`generate` for each (model, params, route), the lot started together: every
        prompt's prefill queued with one wake-up of each model's engine thread, and every
        stream joining with one more. Each item's own error (an unknown model, a bad prompt,
        a full queue) is its entry in the answer; the others start."""
        out: list[Generation | Exception | None] = [None] * len(asks)
        started = time.perf_counter()
        todo: dict[str, tuple[LoadedModel, list[tuple[int, SamplingParams, list[int]]]]] = {}
        for i, (name, p, _route) in enumerate(asks):
            try:
                m = self.model(name)
                m.view.require_lm()
                ids = m.view.encode_full(p.prompt, "prompt") if p.prompt else []
                if not ids:  # (as start_generation: an empty context is primed)
                    ids = m.tokenizer.encode(m.manifest.sampling.prime_text)
                todo.setdefault(m.ident, (m, []))[1].append((i, self.sampling(m, p), ids))
            except Exception as e:
                out[i] = e
        # every model's prefills queued before any is awaited
        queued = [(m, items, self._scheduler(m).submit([(ids, None) for *_, ids in items]))
                  for m, items in todo.values()]  # fmt: skip
        try:
            await self._join_all(asks, queued, started, out)
        except BaseException:  # cancelled: what started stops (its consumer is gone)
            for o in out:
                if isinstance(o, Generation):
                    o.stream.cancel()
            raise
        return [o if o is not None else EngineError("not started") for o in out]

    async def _join_all(
        self,
        asks: Sequence[tuple[str, GenerateParams, Route | None]],
        queued: list[tuple[LoadedModel, list[tuple[int, SamplingParams, list[int]]], Any]],
        started: float,
        out: list[Generation | Exception | None],
    ) -> None:
        # every prefill awaited first, then every stream joins with no await in between: its
        # caller hears of it before any of its tokens can come (the host's `Opened` first)
        results = [await asyncio.gather(*futures, return_exceptions=True) for *_, futures in queued]
        for (m, items, _), done in zip(queued, results, strict=True):
            joining: list[tuple[int, Stream]] = []
            for (i, params, ids), res in zip(items, done, strict=True):
                if isinstance(res, BaseException):
                    out[i] = res if isinstance(res, Exception) else EngineError(str(res))
                    continue
                logits, rows = res
                route = asks[i][2]
                stream = self._stream(m, params, logits, rows, len(ids), started, route, False)
                joining.append((i, stream))
            refusals = self._scheduler(m).join_many([s for _, s in joining])
            for (i, stream), refused in zip(joining, refusals, strict=True):
                if refused is not None:
                    _refused(stream, refused)
                    out[i] = refused
                else:
                    out[i] = Generation(stream, m.name, key=m.key)


def _refused(stream: Stream, error: BaseException) -> None:
    """A stream that never joined: its decode span ends as refused."""
    if stream.trace is not None:
        stream.trace.end("refused", error=error)
        stream.trace = None
