"""A session's state as a portable blob (`sessions/blob.py`): what export writes and what a
create with `state` restores, checked against the model that will run it."""

from __future__ import annotations

from service.engine.registry import LoadedModel
from service.errors import InvalidState
from service.sessions import SessionRecord, encode_state
from service.sessions.blob import StateBlob
from service.sessions.bounds import check_import


def export_blob(m: LoadedModel, rec: SessionRecord) -> bytes:
    """The encoded state of `rec` (its model, version, pending text, states and logits)."""
    return encode_state(StateBlob.of(rec), [s.name for s in m.manifest.io.states])


def restore(m: LoadedModel, rec: SessionRecord, blob: StateBlob) -> SessionRecord:
    """`rec` carrying an imported state: refused (`state_model_mismatch`) unless the blob was
    exported from this very graph, and bounds-checked (`check_import`) before it is trusted."""
    if blob.model_sha256 != m.sha256 or blob.model != m.name:
        raise InvalidState(
            f"the state belongs to model {blob.model!r} ({blob.model_sha256[:12]}…), not "
            f"{m.name!r} ({m.sha256[:12]}…)",
            field="state",
            code="state_model_mismatch",
        )
    check_import(m, blob)
    return rec.replace(
        states=tuple(blob.states),
        pending=blob.pending,
        logits=blob.logits,
        version=blob.version,
        tokens_seen=blob.tokens_seen,
    )
