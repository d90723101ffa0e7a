"""What the API layer may know about the models being served, without their onnxruntime sessions.

A `ModelView` is a model's manifest, tokenizer and the graph actually serving (sha256, variant,
execution provider): enough to describe it, validate requests and tokenize where that is cheap.
The `Catalog` holds every view, the artifacts that were refused, and THE readiness rule, so no
surface re-implements it. An API worker in another process builds the same views from the
manifests the engine loaded; an in-process server takes them from its registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from service.contract import (
    CharTokenizer,
    ModelManifest,
    UnknownCharactersError,
    WordTokenizer,
)
from service.errors import InvalidInput, ModelNotFound, UnknownCharacters, UnsupportedTask

# The longest unfinished word a session holds back between feeds (word tokenizers). Without a
# bound, feeds with no whitespace grew it without end: every feed re-scanned it (1.2-1.5 s on
# the engine's loop at 10M characters) and the session's export outgrew the blob header.
# Every word of the shipped vocabularies is far shorter (longer runs are one [UNK] anyway).
MAX_PENDING_CHARS = 4096


def token_text(tokenizer: CharTokenizer | WordTokenizer, token: int) -> str:
    """A token as generated text: word tokens carry their leading space."""
    text = tokenizer.decode([token])
    return " " + text if isinstance(tokenizer, WordTokenizer) else text


def require_unicode(text: str, field: str) -> None:
    """A JSON string may carry a lone surrogate (`"\\ud800"`): not text, and not encodable as
    UTF-8 (nor across the engine boundary). Refused the same way on every path."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = f"U+{ord(text[e.start]):04X}"
        raise InvalidInput(
            f"{field} is not valid Unicode text (a lone surrogate, {bad}, at {e.start})",
            field=field,
        ) from None


def newest(versions: list[str]) -> list[str]:
    """Model versions oldest first (numbers by value, then any other names)."""
    return sorted(versions, key=lambda v: (int(v), "") if v.isascii() and v.isdigit() else (-1, v))


@dataclass(frozen=True)
class ModelView:
    manifest: ModelManifest
    tokenizer: CharTokenizer | WordTokenizer
    sha256: str  # of the graph actually serving
    variant: str | None  # the manifest variant serving; None: the base (fp32) graph
    provider: str  # the onnxruntime execution provider in use
    created: int = 0  # unix time its artifact was written (the manifest's mtime)
    settings: dict[str, Any] = field(default_factory=dict)  # its settings in force
    draining: bool = False  # being unloaded: its sessions are served, no new work

    @property
    def key(self) -> str:
        """`name@version`: how a request names this very version."""
        return f"{self.name}@{self.manifest.version}"

    @property
    def name(self) -> str:
        return self.manifest.name

    def encode_stream(self, pending: str, text: str, field: str) -> tuple[list[int], str]:
        """Ids of `pending + text`, holding back an unfinished trailing word; refused (422,
        nothing changed) when the word held back would pass `MAX_PENDING_CHARS`."""
        ids, rest = self._encode(pending, text, field)
        if len(rest) > MAX_PENDING_CHARS:
            raise InvalidInput(
                f"{field} leaves an unfinished word of {len(rest)} characters (no whitespace); "
                f"a session holds back at most {MAX_PENDING_CHARS}: end the word with a space "
                "or newline",
                field=field,
            )
        return ids, rest

    def _encode(self, pending: str, text: str, field: str) -> tuple[list[int], str]:
        require_unicode(text, field)
        try:
            return self.tokenizer.encode_stream(pending, text)
        except UnknownCharactersError as e:
            raise UnknownCharacters(str(e), field=field) from None

    def encode_full(self, text: str, field: str) -> list[int]:
        """Ids of a whole text (nothing held back); refused when it has no token at all."""
        ids, pending = self._encode("", text, field)
        ids += self.tokenizer.encode(pending) if pending else []
        if not ids:
            raise InvalidInput("text has no tokens for this model", field=field)
        return ids

    def require_lm(self) -> None:
        if self.manifest.task != "next_token":
            raise UnsupportedTask(
                f"model {self.name!r} is a {self.manifest.task} model; generation needs a "
                "language model",
                field="model",
            )

    def token_text(self, token: int) -> str:
        return token_text(self.tokenizer, token)

    @cached_property
    def vocab(self) -> list[str]:
        """Every token's text by id: decoding a generated token is one list index, on whichever
        side of the wire decodes it (the engine for its own consumers, a worker for its own)."""
        return [token_text(self.tokenizer, i) for i in range(self.tokenizer.vocab_size)]


@dataclass(frozen=True)
class Catalog:
    models: dict[str, ModelView] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # artifact dir -> why it was refused
    versions: dict[str, ModelView] = field(default_factory=dict)  # name@version -> every one

    def __post_init__(self) -> None:
        for m in self.models.values():
            self.versions.setdefault(m.key, m)

    def get(self, ref: str) -> ModelView:
        """`name` (its default version) or `name@version`."""
        name, sep, version = ref.partition("@")
        found = self.versions.get(ref) if sep else self.models.get(name)
        if found is not None and not found.draining:
            return found
        if not sep or name not in self.models:
            raise ModelNotFound(f"no model named {name!r}", field="model")
        serving = ", ".join(sorted(v.manifest.version for v in self.versions_of(name)))
        raise ModelNotFound(
            f"model {name!r} has no version {version!r} serving (serving {serving})",
            field="model",
        )

    def versions_of(self, name: str) -> list[ModelView]:
        """Every version of `name` that takes new work."""
        return [v for v in self.versions.values() if v.name == name and not v.draining]

    def decoder(self, key: str) -> ModelView:
        """The version `key` (`name@version`), draining ones included: whose vocabulary decodes
        a generation it runs."""
        found = self.versions.get(key) or self.models.get(key)
        if found is None:
            raise ModelNotFound(f"no model version {key!r}", field="model")
        return found

    def ready(self, require_all: bool) -> bool:
        """Serving when a model loaded and (with `require_all`) none was refused: what /readyz
        and /v2/health/ready both answer."""
        return bool(self.models) and not (self.failed and require_all)

    def language_models(self) -> list[ModelView]:
        return [m for m in self.models.values() if m.manifest.task == "next_token"]
