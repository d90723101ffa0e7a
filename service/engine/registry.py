"""Loads every model artifact under the models folder at start-up; broken ones are refused."""

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
    tokenizer_from_spec,
)
from service.engine.runner import Runner
from service.errors import ModelNotFound
from service.logging import get_logger
from service.protocol.catalog import Catalog, ModelView

log = get_logger("registry")


@dataclass(frozen=True)
class LoadedModel:
    manifest: ModelManifest
    runner: Runner
    tokenizer: CharTokenizer | WordTokenizer
    path: Path
    variant: str | None = None  # the manifest variant whose graph is loaded; None: the fp32 graph

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def sha256(self) -> str:
        """sha256 of the graph actually loaded."""
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


@dataclass
class Registry:
    models: dict[str, LoadedModel] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # artifact dir -> reason

    def get(self, name: str) -> LoadedModel:
        try:
            return self.models[name]
        except KeyError:
            raise ModelNotFound(f"no model named {name!r}", field="model") from None

    def catalog(self) -> Catalog:
        return Catalog({n: m.view for n, m in self.models.items()}, dict(self.failed))


def _version_key(path: Path) -> tuple[int, str]:
    return (int(path.name), "") if path.name.isdigit() else (-1, path.name)


def find_artifacts(models_dir: Path) -> list[Path]:
    """Artifact folders: `<dir>/<name>/` or `<dir>/<name>/<version>/` holding a manifest."""
    found: list[Path] = []
    if not models_dir.is_dir():
        return found
    for top in sorted(p for p in models_dir.iterdir() if p.is_dir()):
        if (top / MANIFEST_FILE).is_file() or (top / "model.onnx").is_file():
            found.append(top)
            continue
        versions = sorted((p for p in top.iterdir() if p.is_dir()), key=_version_key)
        found += [v for v in versions if (v / MANIFEST_FILE).is_file()]
    return found


def load_registry(
    models_dir: Path,
    providers: Sequence[str] | None = None,
    intra_op_threads: int = 0,
    variant: str | None = None,
) -> Registry:
    """Every artifact under `models_dir`; with `variant`, that graph where the manifest has it,
    else the base (fp32) graph."""
    reg = Registry()
    for path in find_artifacts(models_dir):
        try:
            manifest, onnx_path, used = _load(path, variant)
            runner = Runner(manifest, onnx_path, providers, intra_op_threads)
            tokenizer = tokenizer_from_spec(manifest.tokenizer)
        except Exception as e:  # ArtifactError, or onnxruntime's own InvalidGraph / Fail / ...
            reg.failed[str(path)] = (
                str(e) if isinstance(e, ArtifactError) else f"{type(e).__name__}: {e}"
            )
            log.error("model refused", extra={"artifact": str(path), "reason": str(e)})
            continue
        if manifest.name in reg.models:
            log.info("newer version replaces older", extra={"model": manifest.name})
        reg.models[manifest.name] = LoadedModel(manifest, runner, tokenizer, path, used)
        log.info(
            "model loaded",
            extra={
                "model": manifest.name,
                "version": manifest.version,
                "task": manifest.task,
                "provider": runner.provider,
                "variant": used,
            },
        )
    return reg


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
