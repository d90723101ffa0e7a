"""The model repository at run time: load a model or a new version beside what serves, unload
one with its sessions drained, and say what the models folder holds (Triton's model control API,
which `tritonclient`'s `load_model` / `unload_model` / `get_model_repository_index` call).

* **Loading never pauses serving.** The graph is read and checked, and its onnxruntime session
  built, in a thread; only then does it join the registry (one step on the loop) and the
  catalogs follow (`Engine.changed`: every worker gets the new one). A load that fails leaves
  what served as it was, and says why (400 `model_load_failed`; the index shows the reason).
* **Sessions are pinned to their graph.** A new version becomes the default (or the one the
  model's settings pin), so new sessions and requests get it; a session keeps the graph that made
  its state (`Registry.for_graph`) for as long as that version is loaded.
* **Unloading drains.** The version takes no new work at once; its live sessions are served until
  none is left or `drain_s` passes; then its engine thread ends (work in flight finishes first)
  and a session still on it answers 409 `model_unloaded` naming the version.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

from service.contract.model_settings import ModelSettings, parse_settings_object
from service.engine.dispatch import handles
from service.engine.engine import Engine
from service.engine.registry import (
    LoadedModel,
    LoadOptions,
    ModelFolder,
    load_version,
    refusal,
    scan,
)
from service.errors import InvalidInput, ModelNotFound, ServiceError
from service.heap import give_back_unloaded
from service.logging import get_logger
from service.protocol.catalog import newest
from service.protocol.messages import RepositoryEntry
from service.protocol.ops import LoadModel, RepositoryIndex, UnloadModel
from service.sessions.store import SessionStore

log = get_logger("repository")

DRAIN_POLL_S = 1.0  # how often a drain counts the sessions left (a store scan: not per request)


class ModelLoadFailed(ServiceError):
    status, code = 400, "model_load_failed"


@dataclass
class Drain:
    model: LoadedModel
    deadline: float  # monotonic
    sessions: int | None = None  # left at the last count
    task: asyncio.Task[None] | None = None


class ModelRepository:
    def __init__(
        self,
        engine: Engine,
        store: SessionStore,
        models_dir: Path,
        opts: LoadOptions,
        drain_s: float,
        stop_timeout_s: float,
    ) -> None:
        self.engine = engine
        self.store = store
        self.models_dir = models_dir
        self.opts = opts
        self.drain_s = drain_s
        self.stop_timeout_s = stop_timeout_s  # work in flight on an unloaded version
        self._lock = asyncio.Lock()  # one load or unload at a time
        self._drains: dict[str, Drain] = {}  # by loaded instance (`LoadedModel.ident`)
        self._refused: dict[str, str] = {}  # key -> why its last load failed
        self._unloaded: set[str] = set()  # keys unloaded (not loaded again since)

    # -- the operations ---------------------------------------------------------------------

    @handles(RepositoryIndex)
    async def index(self, op: RepositoryIndex) -> list[RepositoryEntry]:
        folders = await asyncio.to_thread(scan, self.models_dir)
        entries: dict[str, RepositoryEntry] = {}
        for folder in folders.values():
            for version in newest(list(folder.versions)):
                entries[f"{folder.name}@{version}"] = self._entry(folder.name, version)
        for m in self.engine.registry.all():  # loaded, and since removed from the folder
            entries.setdefault(m.key, self._entry(m.name, m.version))
        out = sorted(entries.values(), key=lambda e: (e.name, newest([e.version])))
        return [e for e in out if e.state == "READY"] if op.ready else out

    @handles(LoadModel)
    async def load(self, op: LoadModel) -> list[RepositoryEntry]:
        overrides = (
            parse_settings_object(op.settings, "settings") if op.settings is not None else None
        )
        async with self._lock:
            refused: dict[str, str] = {}
            folder = (await asyncio.to_thread(scan, self.models_dir, refused)).get(op.name)
            why = next((w for path, w in refused.items() if op.name in Path(path).parts[-2:]), None)
            if why is not None:  # its settings.json or a version's manifest does not read
                raise ModelLoadFailed(
                    f"failed to load {op.name}: {why} (what was serving still serves)",
                    field="model",
                )
            if folder is None:
                raise ModelNotFound(
                    f"no model named {op.name!r} in the models folder ({self.models_dir})",
                    field="model",
                )
            settings = folder.settings if overrides is None else folder.settings.merged(overrides)
            folder.settings = settings
            if op.version is not None:
                if op.version not in folder.versions:
                    raise ModelNotFound(
                        f"model {op.name!r} has no version {op.version!r} in the models folder "
                        f"(it has {', '.join(newest(list(folder.versions)))})",
                        field="version",
                    )
                wanted = [op.version]
            else:
                wanted = folder.chosen()
            loaded = await self._load_all(folder, wanted, settings)
            self._swap_in(folder, loaded, explicit=op.version is not None)
        return [self._entry(op.name, v) for v in newest(list(folder.versions))]

    @handles(UnloadModel)
    async def unload(self, op: UnloadModel) -> list[RepositoryEntry]:
        if op.drain_s is not None and not 0 <= op.drain_s <= 7 * 86400:
            raise InvalidInput("drain_s must be between 0 and 604800 seconds", field="drain_s")
        drain_s = self.drain_s if op.drain_s is None else op.drain_s
        reg = self.engine.registry
        async with self._lock:
            serving = reg.versions.get(op.name, {})
            if op.version is not None:
                targets = [serving[op.version]] if op.version in serving else []
                if not targets:
                    raise ModelNotFound(
                        f"model {op.name!r} has no version {op.version!r} loaded", field="version"
                    )
            else:
                targets = list(serving.values())
                if not targets and not any(m.name == op.name for m in reg.draining.values()):
                    raise ModelNotFound(f"no model named {op.name!r} is loaded", field="model")
            drains = [self._start_drain(m, drain_s) for m in targets]
            for m in targets:
                self._unloaded.add(m.key)
                log.info("unloading", extra={"model": m.key, "drain_s": drain_s})
            self.engine.changed()
            # a drain with no session left ends at once: answer with what it came to (the
            # drains are this call's own: one may end and leave `_drains` meanwhile)
            for d in drains:
                await self._counted(d)
        return [self._entry(m.name, m.version) for m in targets]

    def _start_drain(self, m: LoadedModel, drain_s: float) -> Drain:
        """`m` takes no new work from now on; its sessions are served until they are gone or
        `drain_s` passes, then it goes (`_drain`)."""
        self.engine.registry.drain(m)
        d = self._drains[m.ident] = Drain(m, time.monotonic() + drain_s)
        d.task = asyncio.create_task(self._drain(d))
        return d

    async def close(self) -> None:
        tasks = [d.task for d in self._drains.values() if d.task is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- loading ----------------------------------------------------------------------------

    async def _load_all(
        self, folder: ModelFolder, versions: list[str], settings: ModelSettings
    ) -> list[LoadedModel]:
        """Each version in a thread; all or none (a failure discards the ones built)."""
        out = []
        reg = self.engine.registry
        for version in versions:
            key = f"{folder.name}@{version}"
            current = reg.versions.get(folder.name, {}).get(version)
            try:
                m = await asyncio.to_thread(load_version, folder, version, self.opts, settings)
            except Exception as e:  # ArtifactError, or onnxruntime's own error
                self._refused[key] = refusal(e)
                log.error("model load refused", extra={"model": key, "reason": refusal(e)})
                raise ModelLoadFailed(
                    f"failed to load {key}: {refusal(e)} (what was serving still serves)",
                    field="model",
                ) from None
            self._refused.pop(key, None)
            if current is not None and (current.sha256, current.settings.runtime()) == (
                m.sha256,
                settings.runtime(),
            ):
                # the same graph, built the same way: nothing to reload (a new version policy
                # or default version only moves the default)
                m = current
            out.append(m)
        return out

    def _swap_in(self, folder: ModelFolder, loaded: list[LoadedModel], explicit: bool) -> None:
        """One step on the loop: the new versions serve, the default moves, and a version the
        load replaced (same version, another graph or other settings) drains."""
        reg = self.engine.registry
        serving = reg.versions.get(folder.name, {})
        names = [m.version for m in loaded] + ([] if not explicit else list(serving))
        default = folder.default(sorted(set(names)))
        if default is None:
            raise ModelLoadFailed(
                f"default_version {folder.settings.default_version!r} of model "
                f"{folder.name!r} is not among the versions loaded",
                field="model",
            )
        for m in loaded:
            old = serving.get(m.version)
            if old is m:
                if m.version == default:
                    reg.models[m.name] = m
                continue
            self.engine.start_model(m)
            if old is not None:  # replaced in place: its sessions drain
                reg.drain(old)
                d = self._drains[old.ident] = Drain(old, time.monotonic() + self.drain_s)
                d.task = asyncio.create_task(self._drain(d))
            reg.add(m, default=m.version == default)
            self._unloaded.discard(m.key)
            log.info("model loaded", extra={"model": m.key, "default": m.version == default})
        if not explicit:  # the policy's set: versions it no longer names drain
            keep = {m.version for m in loaded}
            for v, m in list(serving.items()):
                if v not in keep:
                    self._start_drain(m, self.drain_s)
        if default in reg.versions.get(folder.name, {}):
            reg.models[folder.name] = reg.versions[folder.name][default]
        self.engine.changed()

    # -- draining ---------------------------------------------------------------------------

    async def _counted(self, d: Drain) -> int:
        m = d.model
        if any(
            o.sha256 == m.sha256 for o in self.engine.registry.versions.get(m.name, {}).values()
        ):
            d.sessions = 0  # reloaded with the same graph: its sessions are served there now
            return 0
        with contextlib.suppress(ServiceError):  # a store outage: count again later
            d.sessions = await self.store.count_graph(m.name, m.sha256)
        return d.sessions if d.sessions is not None else 1

    async def _drain(self, d: Drain) -> None:
        m = d.model
        try:
            while time.monotonic() < d.deadline and await self._counted(d) > 0:
                await asyncio.sleep(min(DRAIN_POLL_S, max(0.0, d.deadline - time.monotonic())))
            # its work in flight (a stream, a queued prefill) finishes before its thread ends
            while time.monotonic() < d.deadline and self.engine.busy(m):
                await asyncio.sleep(0.05)
        except Exception:  # counting failed for good: the deadline still ends it
            log.exception("drain failed; the version goes now", extra={"model": m.key})
        left, key = d.sessions or 0, m.key
        self.engine.registry.retire(m)
        try:
            # shielded: a shutdown that cancels this task still lets the thread stop cleanly
            await asyncio.shield(self.engine.stop_model(m, self.stop_timeout_s))
        finally:
            self._drains.pop(m.ident, None)
            self.engine.changed()
        del m, d  # (the last references to the graph: its memory goes back now)
        give_back_unloaded()
        log.info("model unloaded", extra={"model": key, "sessions_ended": left})

    # -- the index --------------------------------------------------------------------------

    def _entry(self, name: str, version: str) -> RepositoryEntry:
        reg = self.engine.registry
        key = f"{name}@{version}"
        m = reg.versions.get(name, {}).get(version)
        if m is not None:
            return RepositoryEntry(name, version, "READY", default=reg.models.get(name) is m)
        d = next((d for d in self._drains.values() if d.model.key == key), None)
        if d is not None:
            left = max(0.0, d.deadline - time.monotonic())
            return RepositoryEntry(
                name,
                version,
                "DRAINING",
                f"unloading: serving its live sessions for up to {left:.0f} s more",
                sessions=d.sessions,
            )
        if key in self._refused:
            return RepositoryEntry(name, version, "UNAVAILABLE", self._refused[key])
        for path, why in reg.failed.items():
            if Path(path).name in (name, version):
                return RepositoryEntry(name, version, "UNAVAILABLE", why)
        why = "unloaded" if key in self._unloaded else "not loaded (its version policy)"
        return RepositoryEntry(name, version, "UNAVAILABLE", why)
