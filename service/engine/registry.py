"""The models being served: each name's loaded versions and its default one, the artifacts that
were refused, and the graphs unloaded while this process ran (a session on one is told so).

Loading reads `<models dir>/<name>/` (one artifact) or `<models dir>/<name>/<version>/` (several):
which versions load is the model's version policy (`model_settings.py`). Broken artifacts are
refused with the reason and the rest serve. `ModelRepository` (`repository.py`) loads and unloads
at run time through `load_named` and the registry's `add` / `retire`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from service.contract import (
    MANIFEST_FILE,
    ArtifactError,
    CharTokenizer,
    ModelManifest,
    WordTokenizer,
    load_artifact,
    load_manifest,
    tokenizer_from_spec,
)
from service.contract.model_settings import ModelSettings, read_settings
from service.engine.runner import Runner
from service.errors import ModelChanged, ModelNotFound
from service.logging import get_logger
from service.protocol.catalog import Catalog, ModelView, newest

log = get_logger("registry")


@dataclass(frozen=True)
class LoadedModel:
    manifest: ModelManifest
    runner: Runner
    tokenizer: CharTokenizer | WordTokenizer
    path: Path
    variant: str | None = None  # the manifest variant whose graph is loaded; None: the fp32 graph
    settings: ModelSettings = field(default_factory=ModelSettings)  # its settings.json

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @cached_property  # (formatted once: every stream and feed looks its scheduler up by it)
    def key(self) -> str:
        """`name@version`: how a request names this very version."""
        return f"{self.name}@{self.version}"

    @cached_property
    def ident(self) -> str:
        """This loaded instance (a version reloaded in place drains its old instance beside the
        new one: same key, two engine threads)."""
        return f"{self.key}#{id(self):x}"

    @cached_property
    def sha256(self) -> str:
        """sha256 of the graph actually loaded (each session step checks it: looked up once)."""
        for v in self.manifest.variants:
            if v.name == self.variant:
                return v.sha256
        return self.manifest.onnx_sha256

    @cached_property
    def view(self) -> ModelView:
        """What the API layer may know of it (no onnxruntime session)."""
        manifest = self.path / MANIFEST_FILE
        created = int(manifest.stat().st_mtime) if manifest.is_file() else 0
        return ModelView(
            self.manifest, self.tokenizer, self.sha256, self.variant, self.runner.provider, created
        )


def split_ref(ref: str) -> tuple[str, str | None]:
    """`name` or `name@version` (a model name never holds `@`)."""
    name, sep, version = ref.partition("@")
    return name, (version if sep else None)


@dataclass
class Registry:
    models: dict[str, LoadedModel] = field(default_factory=dict)  # name -> its default version
    failed: dict[str, str] = field(default_factory=dict)  # artifact dir -> reason
    # name -> version -> model, every version serving (the default one included)
    versions: dict[str, dict[str, LoadedModel]] = field(default_factory=dict)
    # ident -> a version being unloaded: no new work, its sessions still served until it goes
    draining: dict[str, LoadedModel] = field(default_factory=dict)
    # sha256 -> key of each graph unloaded while this process ran (a session on one is told so)
    retired: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, m in self.models.items():
            self.versions.setdefault(name, {}).setdefault(m.version, m)

    def get(self, ref: str) -> LoadedModel:
        """`name` (its default version) or `name@version`, among the versions serving."""
        name, version = split_ref(ref)
        if version is None:
            try:
                return self.models[name]
            except KeyError:
                raise ModelNotFound(f"no model named {name!r}", field="model") from None
        found = self.versions.get(name, {}).get(version)
        if found is not None:
            return found
        if name not in self.versions:
            raise ModelNotFound(f"no model named {name!r}", field="model")
        draining = any(m.key == ref for m in self.draining.values())
        why = "it is being unloaded" if draining else "it is not loaded"
        raise ModelNotFound(
            f"model {name!r} has no version {version!r} serving ({why}; serving "
            f"{', '.join(sorted(self.versions[name]))})",
            field="model",
        )

    def knows(self, name: str) -> bool:
        """A version of `name` serves or drains."""
        return name in self.versions or any(m.name == name for m in self.draining.values())

    def for_graph(self, name: str, sha256: str, since: str) -> LoadedModel:
        """The loaded version of `name` whose graph is `sha256` (a session's, pinned to the
        graph that made its state), draining ones included; else 409 `model_changed` saying
        what became of it (`since`: what the session should do)."""
        for m in self.versions.get(name, {}).values():
            if m.sha256 == sha256:
                return m
        for m in self.draining.values():
            if m.name == name and m.sha256 == sha256:
                return m
        gone = self.retired.get(sha256)
        if gone is not None:
            raise ModelChanged(f"model version {gone} was unloaded {since}", code="model_unloaded")
        if name not in self.versions:
            raise ModelNotFound(f"no model named {name!r}", field="model")
        raise ModelChanged(
            f"model {name!r} changed {since} (its graph, sha256 {sha256[:12]}…, is not served "
            f"here: serving version {', '.join(sorted(self.versions[name]))})"
        )

    def all(self) -> list[LoadedModel]:
        """Every version with an engine thread: serving, then draining."""
        return [m for vs in self.versions.values() for m in vs.values()] + list(
            self.draining.values()
        )

    def add(self, m: LoadedModel, default: bool) -> None:
        self.versions.setdefault(m.name, {})[m.version] = m
        if default or m.name not in self.models:
            self.models[m.name] = m
        self.retired.pop(m.sha256, None)

    def drain(self, m: LoadedModel) -> None:
        """`m` takes no new work; its sessions are still served (see `for_graph`)."""
        vs = self.versions.get(m.name, {})
        vs.pop(m.version, None)
        self.draining[m.ident] = m
        if not vs:
            self.versions.pop(m.name, None)
            self.models.pop(m.name, None)
        elif self.models.get(m.name) is m:
            self.models[m.name] = vs[newest(list(vs))[-1]]

    def retire(self, m: LoadedModel) -> None:
        """`m` is gone: a session still on it is told which version it was."""
        self.draining.pop(m.ident, None)
        if not any(o.sha256 == m.sha256 for o in self.all()):  # (reloaded: it still serves)
            self.retired[m.sha256] = m.key

    def catalog(self) -> Catalog:
        return Catalog(
            {n: m.view for n, m in self.models.items()},
            dict(self.failed),
            {m.key: m.view for vs in self.versions.values() for m in vs.values()},
        )


@dataclass(frozen=True)
class LoadOptions:
    """How the server loads a graph (its settings; a model's own settings.json goes over them)."""

    providers: Sequence[str] | None = None
    intra_op_threads: int = 0
    variant: str | None = None


@dataclass
class ModelFolder:
    """One model as found on disk: its settings and each version's artifact folder."""

    name: str
    top: Path
    versions: dict[str, Path] = field(default_factory=dict)  # version -> artifact folder
    settings: ModelSettings = field(default_factory=ModelSettings)

    def chosen(self) -> list[str]:
        """The versions its policy loads, oldest first."""
        return self.settings.version_policy.choose(newest(list(self.versions)))

    def default(self, loaded: list[str]) -> str | None:
        want = self.settings.default_version
        if want is not None:
            return want if want in loaded else None
        return newest(loaded)[-1] if loaded else None


def scan(models_dir: Path, failed: dict[str, str] | None = None) -> dict[str, ModelFolder]:
    """Every model folder under `models_dir` by model name (the manifests' name), reading only
    manifests and settings; what cannot be read goes to `failed` (artifact dir -> why)."""
    failed = failed if failed is not None else {}
    found: dict[str, ModelFolder] = {}
    if not models_dir.is_dir():
        return found
    for top in sorted(p for p in models_dir.iterdir() if p.is_dir()):
        flat = (top / MANIFEST_FILE).is_file() or (top / "model.onnx").is_file()
        dirs = [top] if flat else [p for p in top.iterdir() if (p / MANIFEST_FILE).is_file()]
        try:
            settings = read_settings(top)
        except ArtifactError as e:
            _refuse(failed, top, str(e))
            continue
        for path in sorted(dirs):
            try:
                manifest = load_manifest(path)
            except ArtifactError as e:
                _refuse(failed, path, str(e))
                continue
            # a versions folder's name is the version (the manifest's is what it was exported as)
            version = manifest.version if flat else path.name
            folder = found.setdefault(manifest.name, ModelFolder(manifest.name, top))
            if folder.top != top:
                _refuse(failed, path, f"model {manifest.name!r} is already in {folder.top}")
                continue
            folder.settings = settings
            folder.versions[version] = path
    return found


def load_version(
    folder: ModelFolder, version: str, opts: LoadOptions, settings: ModelSettings | None = None
) -> LoadedModel:
    """One version's graph, checked and loaded (blocking: seconds for a big graph); raises
    `ArtifactError` or onnxruntime's own error."""
    own = settings or folder.settings
    path = folder.versions[version]
    variant = own.variant if own.variant is not None else opts.variant
    manifest, onnx_path, used = _load(path, None if variant == "fp32" else variant)
    if manifest.version != version:
        manifest = manifest.model_copy(update={"version": version})
    threads = opts.intra_op_threads if own.intra_op_threads is None else own.intra_op_threads
    runner = Runner(manifest, onnx_path, opts.providers, threads)
    tokenizer = tokenizer_from_spec(manifest.tokenizer)
    return LoadedModel(manifest, runner, tokenizer, path, used, own)


def _refuse(failed: dict[str, str], artifact: Path, why: str) -> None:
    failed[str(artifact)] = why
    log.error("model refused", extra={"artifact": str(artifact), "reason": why})


def refusal(e: Exception) -> str:
    """Why an artifact was refused, as the index and readiness say it."""
    return str(e) if isinstance(e, ArtifactError) else f"{type(e).__name__}: {e}"


def load_registry(
    models_dir: Path,
    providers: Sequence[str] | None = None,
    intra_op_threads: int = 0,
    variant: str | None = None,
) -> Registry:
    """Every model under `models_dir`, the versions its policy names; with `variant`, that
    graph where the manifest has it, else the base (fp32) graph."""
    reg = Registry()
    opts = LoadOptions(providers, intra_op_threads, variant)
    for folder in scan(models_dir, reg.failed).values():
        loaded: list[LoadedModel] = []
        for version in folder.chosen():
            try:
                loaded.append(load_version(folder, version, opts))
            except Exception as e:  # ArtifactError, or onnxruntime's own InvalidGraph / Fail / ...
                _refuse(reg.failed, folder.versions[version], refusal(e))
        default = folder.default([m.version for m in loaded])
        if loaded and default is None:  # a pinned default that did not load: none serve
            reg.failed[str(folder.top)] = (
                f"default_version {folder.settings.default_version!r} is not among the "
                f"versions loaded ({', '.join(m.version for m in loaded)})"
            )
            continue
        for m in loaded:
            reg.add(m, default=m.version == default)
            _logged(m, default)
    return reg


def _logged(m: LoadedModel, default: str | None) -> None:
    log.info(
        "model loaded",
        extra={
            "model": m.name,
            "version": m.version,
            "default": m.version == default,
            "task": m.manifest.task,
            "provider": m.runner.provider,
            "variant": m.variant,
        },
    )


def _load(path: Path, variant: str | None) -> tuple[ModelManifest, Path, str | None]:
    manifest, onnx_path = load_artifact(path)
    if variant is None:
        return manifest, onnx_path, None
    if not any(v.name == variant for v in manifest.variants):
        log.info(
            "no such variant, loading the base graph",
            extra={"model": manifest.name, "artifact": str(path), "variant": variant},
        )
        return manifest, onnx_path, None
    manifest, onnx_path = load_artifact(path, variant)  # its own sha256 is checked
    return manifest, onnx_path, variant
