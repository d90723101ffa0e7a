"""What the client returns: small frozen dataclasses over the service's JSON (`raw` keeps all of it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Model:
    name: str
    version: str
    task: str  # "classify" | "next_token"
    cell: str
    labels: list[str] | None
    sampling: dict[str, Any]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def parse(cls, d: dict[str, Any]) -> Model:
        return cls(
            d["name"], d["version"], d["task"], d["cell"], d.get("labels"), d.get("sampling", {}), d
        )


@dataclass(frozen=True)
class Output:
    """Classifier: `label` + `probs`; language model: `next` as `[(token, prob), ...]`."""

    label: str | None = None
    probs: dict[str, float] | None = None
    next: list[tuple[str, float]] | None = None

    @classmethod
    def parse(cls, d: dict[str, Any] | None) -> Output | None:
        if d is None:
            return None
        nxt = d.get("next")
        return cls(
            d.get("label"),
            d.get("probs"),
            None if nxt is None else [(t["token"], t["prob"]) for t in nxt],
        )


@dataclass(frozen=True)
class Generation:
    """A finished generation (non-streaming call, or `TokenStream.result`)."""

    text: str
    finish_reason: str  # "length" | "stop"
    seed: int
    usage: dict[str, int]
    session_id: str | None = None
    version: int | None = None
    replayed: bool = False
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def parse(cls, d: dict[str, Any]) -> Generation:
        return cls(
            d["text"],
            d["finish_reason"],
            d["seed"],
            d["usage"],
            d.get("session_id"),
            d.get("version"),
            bool(d.get("replayed")),
            d,
        )


@dataclass(frozen=True)
class FeedResult:
    session_id: str
    version: int
    tokens: int
    pending_chars: int
    output: Output | None
    replayed: bool

    @classmethod
    def parse(cls, d: dict[str, Any]) -> FeedResult:
        return cls(
            d["session_id"],
            d["version"],
            d["tokens"],
            d["pending_chars"],
            Output.parse(d.get("output")),
            bool(d.get("replayed")),
        )


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    model: str
    version: int
    expires_at: float
    tokens_seen: int
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def parse(cls, d: dict[str, Any]) -> SessionInfo:
        return cls(d["session_id"], d["model"], d["version"], d["expires_at"], d["tokens_seen"], d)
