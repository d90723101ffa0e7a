"""The engine boundary: what the engine answers the API layer, as frozen, typed messages.

Every surface (native `/v1`, WebSocket, v2, OpenAI) receives these and maps them to its own
schema; no surface edits a structure the engine built. They are msgspec structs so that they
cross a process boundary as they are (msgpack), and `PROTOCOL_VERSION` names their layout:
bump it when a field changes meaning or goes away (adding a field with a default does not).

They are also the native surface's JSON (`service/api/encode.py` encodes them as they are;
`service/api/schemas.py` describes the same shapes for OpenAPI, and a test keeps the two
agreeing): a result's optional field that is unset is left out of it (`omit_defaults`).

The same structs are what an `Idempotency-Key` replay returns: a stored result is kept as
`msgspec.to_builtins(result)` and read back with `replayed(...)`.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import msgspec
import numpy as np

PROTOCOL_VERSION = 1


class Message(msgspec.Struct, frozen=True, forbid_unknown_fields=False, gc=False):
    """Base of every boundary message (frozen; fields the reader does not know are ignored, so
    an older reader accepts a newer writer's added fields).

    `gc=False`: a message is data (strings, numbers, tuples, other messages) and never part of a
    reference cycle, so the cyclic collector need not track it; a worker decodes one per token
    per stream, and each tracked one brought the next collection closer."""


# -- outputs of a prediction or a feed -------------------------------------------------------


class Prob(Message, frozen=True):
    token: str
    prob: float


class Classification(Message, frozen=True, tag="classify", tag_field="kind"):
    """A classifier's output on the text so far."""

    label: str
    probs: dict[str, float]


class NextTokens(Message, frozen=True, tag="next_token", tag_field="kind"):
    """A language model's most likely next tokens, most likely first."""

    next: tuple[Prob, ...]


Output = Classification | NextTokens


# -- generation ------------------------------------------------------------------------------


class Alternative(Message, frozen=True):
    token: str
    logprob: float


class StepLogprob(Message, frozen=True):
    """At one generation step: the chosen token's log-probability and the most likely
    alternatives (carried by that token's stream event)."""

    logprob: float
    top: tuple[Alternative, ...]


class TokenLogprob(Message, frozen=True):
    """A generated token's text with its step's log-probabilities (in a finished result)."""

    token: str
    logprob: float
    top: tuple[Alternative, ...]


class Usage(Message, frozen=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


FinishReason = Literal["length", "stop"]


class GenerateParams(Message, frozen=True):
    """A validated generation request. `None` fields take the model's manifest defaults."""

    prompt: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None


class GenerationResult(Message, frozen=True, omit_defaults=True):
    """A finished generation (the last event of a stream, or the whole non-streaming answer)."""

    model: str
    text: str
    finish_reason: FinishReason
    usage: Usage
    seed: int
    stop: str | None = None  # the stop string that ended it
    logprobs: tuple[TokenLogprob, ...] | None = None  # asked for, and not a stream
    session_id: str | None = None  # generated from a session
    version: int | None = None  # the session's version after committing
    replayed: bool | None = None  # a session's: an Idempotency-Key replay (nothing ran)


class Finished(Message, frozen=True):
    """The last item of a generation stream: its result."""

    result: GenerationResult


# -- sessions --------------------------------------------------------------------------------


class RepositoryEntry(Message, frozen=True):
    """A model version in the repository (the models folder) and what the server does with it."""

    name: str
    version: str
    state: str  # READY | DRAINING | UNAVAILABLE (Triton's names)
    reason: str = ""  # why it is not READY (a refusal, "not loaded", a drain's progress)
    default: bool = False  # the version a request naming only the model gets
    sessions: int | None = None  # live sessions pinned to it (a draining version's)


class SessionInfo(Message, frozen=True, omit_defaults=True):
    session_id: str
    model: str
    version: int
    created_at: float
    expires_at: float
    ttl_s: float
    tokens_seen: int
    pending_chars: int
    replayed: bool | None = None  # a change's (reset): an Idempotency-Key replay


class SequenceOutput(Message, frozen=True):
    """A v2 sequence step's answer: the logits (K,) on all of its input so far, and the version
    (`name@version`) it ran on, the one the sequence is pinned to, whose outputs describe them."""

    logits: np.ndarray
    model: str


class FeedResult(Message, frozen=True):
    session_id: str
    version: int
    tokens: int  # tokens this chunk added to the state
    pending_chars: int  # held-back characters of an unfinished word
    output: Output | None  # on all text so far; None before any token
    replayed: bool = False


class StateExport(Message, frozen=True):
    session_id: str
    model: str
    version: int
    state: bytes  # the portable, checksummed blob (service/sessions/blob.py)


class SequenceRef(Message, frozen=True):
    """One request of a Triton sequence (a v2 `sequence_id`): the session it is, and whether
    it starts or ends it. `label` names it in messages (a uint64 id bare, a string id quoted)."""

    session_id: str
    label: str
    start: bool = False
    end: bool = False


# -- idempotency records ---------------------------------------------------------------------

R = TypeVar("R", GenerationResult, SessionInfo, FeedResult)


def stored(result: Message) -> dict[str, Any]:
    """A result as the session store keeps it for `Idempotency-Key` replays (JSON-able)."""
    out: dict[str, Any] = msgspec.to_builtins(result)
    return out


def replayed(kind: type[R], record: dict[str, Any]) -> R:
    """A stored result read back, marked as a replay."""
    out = record.get("output")
    if isinstance(out, dict) and "kind" not in out:  # a record stored before outputs had a kind
        record = {
            **record,
            "output": {**out, "kind": "classify" if "label" in out else "next_token"},
        }
    return msgspec.structs.replace(msgspec.convert(record, kind), replayed=True)
