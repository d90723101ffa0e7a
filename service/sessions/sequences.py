"""v2 sequences (Triton's sequence batcher semantics), where one inference request is one step
of a session: the sequence id IS the session id, so either protocol continues what the other
started. The step itself is the session service's (`SessionService.sequence_step`: the same
lookup, lock, model check, advance and commit as a feed); this module holds what differs in
words and input: a gone sequence is a 400 naming it, a row is text or token ids, and the first
request must carry tokens."""

from __future__ import annotations

from service.engine.registry import LoadedModel
from service.errors import (
    InvalidInput,
    SequenceError,
    ServiceError,
    SessionEvicted,
    SessionExpired,
    SessionNotFound,
)
from service.protocol.messages import SequenceRef

FIELD = "parameters.sequence_id"

_GONE: dict[type[ServiceError], str] = {
    SessionNotFound: "does not exist (never started, ended, or owned by another key)",
    SessionExpired: "expired after its idle TTL",
    SessionEvicted: "was evicted (live-session cap reached)",
}


def gone(seq: SequenceRef, e: ServiceError) -> SequenceError:
    """The 400 for continuing a sequence that is not live (why, from the store's error)."""
    why = _GONE.get(type(e), _GONE[SessionNotFound])
    return SequenceError(
        f"sequence {seq.label} {why}; send sequence_start=true to begin it", field=FIELD
    )


def require_model(seq: SequenceRef, held: str, asked: str) -> None:
    if held != asked:
        raise SequenceError(
            f"sequence {seq.label} belongs to model {held!r}, not {asked!r}", field=FIELD
        )


def row(
    m: LoadedModel,
    seq: SequenceRef,
    pending: str,
    text: str | None,
    ids: list[int] | None,
) -> tuple[list[int], str]:
    """The tokens a request's row adds, and the unfinished word held back after it."""
    if text is not None:
        return m.view.encode_stream(pending, text, "TEXT")
    if pending:
        raise InvalidInput(
            f"sequence {seq.label} holds unfinished text; continue it with TEXT",
            field="TOKEN_IDS",
        )
    return list(ids or []), ""


def empty(seq: SequenceRef, text: bool) -> InvalidInput:
    return InvalidInput(
        f"sequence {seq.label} has no tokens yet: the first request needs non-empty input",
        field="TEXT" if text else "TOKEN_IDS",
    )
