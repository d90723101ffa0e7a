"""A model's own settings: `<models dir>/<name>/settings.json`, beside its manifest (or beside its
version folders), read when the model loads.

Every field is optional: what the file leaves out comes from the server's settings (the
environment), so one file tunes one model (a 4M-parameter classifier wants bigger, slower batches
than a char model generating for hundreds of streams). A file that does not parse, or names a
field this server does not know, refuses the model with the reason (a typo must not be ignored).

    {"max_batch_size": 128, "max_wait_ms": 5, "version_policy": {"latest": 2}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.contract.artifact import ArtifactError

SETTINGS_FILE = "settings.json"

# Two versions by default: a rolling update that adds version N+1 keeps serving the sessions that
# started on version N (they are pinned to it) while new sessions start on N+1; a third version
# unloads the oldest.
DEFAULT_LATEST = 2


class VersionPolicy(BaseModel):
    """Which versions under the model's folder load (Triton's policies): the newest `latest`,
    `all` of them, or the `specific` ones named."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    latest: int | None = Field(None, ge=1, description="Load the newest N versions.")
    all: bool | None = Field(None, description="Load every version found.")
    specific: list[str] | None = Field(None, min_length=1, description="Load these versions.")

    @model_validator(mode="after")
    def _one(self) -> VersionPolicy:
        given = [k for k in ("latest", "all", "specific") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"name one of latest, all, specific (got {', '.join(given)})")
        return self

    def choose(self, versions: list[str]) -> list[str]:
        """The versions to load, of `versions` (oldest first)."""
        if self.all:
            return list(versions)
        if self.specific is not None:
            return [v for v in versions if v in self.specific]
        return versions[-(self.latest or DEFAULT_LATEST) :]


class ModelSettings(BaseModel):
    """What `settings.json` may say; None: the server's setting of the same name."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_batch_size: int | None = Field(None, ge=1, le=4096, description="Rows per prefill batch.")
    max_wait_ms: float | None = Field(None, ge=0, le=1000, description="Wait to fill a batch.")
    max_streams: int | None = Field(None, ge=1, le=65536, description="Decode batch rows.")
    variant: Literal["int8", "fp16", "fp32"] | None = Field(
        None, description="The graph to serve (fp32: the base graph, whatever the server's)."
    )
    intra_op_threads: int | None = Field(None, ge=0, le=256, description="onnxruntime threads.")
    version_policy: VersionPolicy = Field(
        default_factory=VersionPolicy, description="Which versions load."
    )
    default_version: str | None = Field(
        None, description="The version new sessions and requests get (default: the newest)."
    )

    def merged(self, other: ModelSettings) -> ModelSettings:
        """These settings with `other`'s fields where `other` sets them (a load's overrides)."""
        return ModelSettings.model_validate(
            {**self.model_dump(exclude_unset=True), **other.model_dump(exclude_unset=True)}
        )

    def runtime(self) -> tuple[object, ...]:
        """What an instance is built with: a change to these needs a new engine thread (the
        version policy and the default version do not)."""
        return (
            self.max_batch_size,
            self.max_wait_ms,
            self.max_streams,
            self.variant,
            self.intra_op_threads,
        )


class EffectiveSettings(BaseModel):
    """A loaded model's settings in force: its file's, else the server's (what `/v1/models` and
    the v2 model config show)."""

    model_config = ConfigDict(frozen=True)
    max_batch_size: int
    max_wait_ms: float
    max_streams: int
    variant: str
    intra_op_threads: int
    version_policy: dict[str, object]
    default_version: str | None


def parse_settings(raw: str | bytes, where: str) -> ModelSettings:
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{where}: not JSON: {e}") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{where}: not a JSON object")
    try:
        return ModelSettings.model_validate(data)
    except ValidationError as e:
        why = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or '(file)'}: {err['msg']}" for err in e.errors()
        )
        raise ArtifactError(f"{where}: {why}") from None


def read_settings(folder: Path) -> ModelSettings:
    """`folder/settings.json`, or all defaults when there is none."""
    path = folder / SETTINGS_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return ModelSettings()
    except OSError as e:
        raise ArtifactError(f"{path}: unreadable: {e}") from None
    return parse_settings(raw, str(path))


def effective(
    own: ModelSettings,
    max_batch_size: int,
    max_wait_ms: float,
    max_streams: int,
    intra_op_threads: int,
    variant: str | None,
) -> EffectiveSettings:
    """`own` over the server's settings (passed as they stand)."""
    return EffectiveSettings(
        max_batch_size=own.max_batch_size or max_batch_size,
        max_wait_ms=max_wait_ms if own.max_wait_ms is None else own.max_wait_ms,
        max_streams=own.max_streams or max_streams,
        variant=variant or "fp32",
        intra_op_threads=intra_op_threads if own.intra_op_threads is None else own.intra_op_threads,
        version_policy=own.version_policy.model_dump(exclude_none=True)
        or {"latest": DEFAULT_LATEST},
        default_version=own.default_version,
    )


def parse_settings_object(raw: object, field: str) -> ModelSettings:
    """A load's settings (a JSON object, as in settings.json), refused with a 422 naming the
    field and what is wrong."""
    from service.errors import InvalidInput  # (the contract itself raises no HTTP errors)

    try:
        return parse_settings(json.dumps(raw), field)
    except (ArtifactError, TypeError, ValueError) as e:
        raise InvalidInput(str(e), field=field) from None
