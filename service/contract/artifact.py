"""Reading and writing a model artifact: `<dir>/model.onnx` + `<dir>/manifest.json`."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from pydantic import ValidationError

from service.contract.manifest import SCHEMA_VERSION, ModelManifest

MANIFEST_FILE = "manifest.json"
ONNX_FILE = "model.onnx"


class ArtifactError(Exception):
    """An artifact that cannot be served: missing files, unknown schema, checksum mismatch."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        # mkstemp creates 0600; artifacts are read by other users (e.g. a non-root container user)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_artifact(directory: Path, onnx_bytes: bytes, manifest: ModelManifest) -> ModelManifest:
    """Write the graph and its manifest; the manifest's sha256 is set from the bytes written."""
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(onnx_bytes).hexdigest()
    manifest = manifest.model_copy(update={"onnx_sha256": digest, "onnx_file": ONNX_FILE})
    ModelManifest.model_validate(manifest.model_dump())  # re-validate after the update
    _atomic_write(directory / ONNX_FILE, onnx_bytes)
    text = manifest.model_dump_json(indent=1)
    _atomic_write(directory / MANIFEST_FILE, (text + "\n").encode())
    return manifest


def load_manifest(directory: Path) -> ModelManifest:
    path = directory / MANIFEST_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{directory}: no {MANIFEST_FILE}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: unreadable manifest: {e}") from None
    if not isinstance(raw, dict):
        raise ArtifactError(f"{path}: manifest is not a JSON object")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ArtifactError(
            f"{path}: schema_version {version!r} is not supported (this server reads "
            f"{SCHEMA_VERSION})"
        )
    try:
        return ModelManifest.model_validate(raw)
    except ValidationError as e:
        raise ArtifactError(f"{path}: invalid manifest: {e}") from None


def load_artifact(directory: Path, variant: str | None = None) -> tuple[ModelManifest, Path]:
    """Validate an artifact and return its manifest and the path of the graph to load.

    The file's sha256 must match the manifest: a graph swapped under a manifest is refused.
    """
    manifest = load_manifest(directory)
    file, expected = manifest.onnx_file, manifest.onnx_sha256
    if variant is not None:
        found = [v for v in manifest.variants if v.name == variant]
        if not found:
            raise ArtifactError(f"{directory}: no {variant!r} variant")
        file, expected = found[0].file, found[0].sha256
        manifest = manifest.served_as(found[0])
    onnx_path = directory / file
    if not onnx_path.is_file():
        raise ArtifactError(f"{directory}: missing {file}")
    actual = sha256_file(onnx_path)
    if actual != expected:
        raise ArtifactError(
            f"{onnx_path}: sha256 {actual[:12]}… does not match the manifest's {expected[:12]}…"
        )
    return manifest, onnx_path
