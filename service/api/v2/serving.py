"""v2 inference: decode the input tensors, run them through the engine, encode the outputs.

Stateless rows are prefilled from a fresh state (the scheduler batches them with everything else
waiting); a request with a `sequence_id` is one step of a session
(`SessionService.sequence_step`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from service.api.deps import Services
from service.api.health import engine_problems
from service.api.v2 import binary, protocol
from service.api.v2.binary import BinaryProtocolError
from service.api.v2.protocol import (
    LABEL,
    LOGITS,
    PROBS,
    TEXT,
    TOKEN_IDS,
    InferRequest,
    RequestInput,
    Sequence,
)
from service.errors import InvalidInput, ModelNotFound
from service.protocol.catalog import ModelView
from service.protocol.messages import SequenceRef
from service.protocol.ops import Logits, SequenceStep
from service.protocol.softmax import softmax


@dataclass(frozen=True)
class Rows:
    """Validated input: texts, or token id rows (exactly one is set)."""

    texts: list[str] | None = None
    ids: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.texts if self.texts is not None else self.ids or [])


def model_of(s: Services, name: str, version: str | None, draining_ok: bool = False) -> ModelView:
    """The model's default version, or the one named (any version serving; with
    `draining_ok`, one being unloaded too: a sequence running on it goes on)."""
    if "@" in name:  # a model name never holds one: `name@version` is for the other surfaces
        raise ModelNotFound(f"no model named {name!r}")
    if version is not None and draining_ok:
        found = s.client.catalog.versions.get(f"{name}@{version}")
        if found is not None:
            return found
    return s.client.catalog.get(name if version is None else f"{name}@{version}")


async def server_not_ready(s: Services) -> str | None:
    """Why the server is not ready, or None: the rule `/readyz` answers by (a model serves and,
    with `require_all_models`, none was refused; the engine moves)."""
    cat = s.client.catalog
    problems = await engine_problems(s.client)
    if cat.ready(s.settings.require_all_models) and not problems:
        return None
    if problems:
        return "; ".join(f"{k}: {v}" for k, v in problems.items())
    return "no model loaded" if not cat.models else f"{len(cat.failed)} model(s) refused"


async def not_ready(s: Services, m: ModelView) -> str | None:
    """Why the model is not ready, or None: ready while its engine thread moves (the
    watchdog's word, as `/readyz` hears it), not a yes that a stuck model would also give."""
    problems = await engine_problems(s.client)
    # (the engine names a stalled model's thread by its name, or name@version beside another)
    why = next((problems[k] for k in (m.key, m.name, "engine") if k in problems), None)
    return None if why is None else f"model {m.key} is not ready: {why}"


@dataclass(frozen=True)
class Answer:
    """An inference's outcome: the version that answered, its logits (B, K), and the outputs
    asked for, each with whether it goes in binary."""

    model: ModelView
    logits: np.ndarray
    wanted: list[tuple[str, bool]]


async def infer(
    s: Services,
    model: str,
    version: str | None,
    req: InferRequest,
    rest: bytes,
    owner: str | None,
) -> Answer:
    """One v2 inference request (HTTP or gRPC), its binary parts in `rest`. Everything about
    the request is checked before anything runs: a refused sequence step changes nothing."""
    params = req.parameters or {}
    protocol.check_parameters(params)
    seq = protocol.parse_sequence(params)
    m = model_of(s, model, version, draining_ok=seq is not None and not seq.start)
    wanted = wanted_outputs(m, req, protocol.binary_output_default(params))
    rows = read_rows(m, req, rest, s)
    logits, ran_on = await run(s, m, rows, seq, owner, m.key if version is not None else None)
    return Answer(ran_on, logits, wanted)


def _raw_inputs(req: InferRequest, rest: bytes) -> dict[str, np.ndarray]:
    sizes: list[tuple[str, int | None]] = []
    for inp in req.inputs:
        size = (inp.parameters or {}).get("binary_data_size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise BinaryProtocolError(
                f"input {inp.name!r}: binary_data_size must be a non-negative integer",
                field=f"{inp.name}.binary_data_size",
            )
        sizes.append((inp.name, size if isinstance(size, int) else None))
    raw = binary.take_binary(rest, sizes)
    out: dict[str, np.ndarray] = {}
    for inp in req.inputs:
        if inp.name in out:
            raise BinaryProtocolError(f"input {inp.name!r} is given twice", field=inp.name)
        extra = set(inp.parameters or {}) - {"binary_data_size"}
        if extra:
            raise BinaryProtocolError(
                f"input {inp.name!r}: unsupported parameter(s) {sorted(extra)} (shared memory "
                "is not supported)",
                field=f"{inp.name}.parameters",
            )
        out[inp.name] = _decode(inp, raw.get(inp.name))
    return out


def _decode(inp: RequestInput, raw: bytes | None) -> np.ndarray:
    if raw is not None:
        if inp.data is not None:
            raise BinaryProtocolError(
                f"input {inp.name!r} has both binary_data_size and data", field=inp.name
            )
        return binary.decode_raw(inp.name, inp.datatype, inp.shape, raw)
    if inp.data is None:
        raise BinaryProtocolError(
            f"input {inp.name!r} has neither data nor binary_data_size", field=inp.name
        )
    return binary.decode_json(inp.name, inp.datatype, inp.shape, inp.data)


def read_rows(m: ModelView, req: InferRequest, rest: bytes, s: Services) -> Rows:
    arrays = _raw_inputs(req, rest)
    allowed = [t.name for t in protocol.input_specs(m)]
    unknown = sorted(set(arrays) - set(allowed))
    if unknown:
        raise InvalidInput(
            f"model {m.name!r} has no input(s) {unknown}; its inputs: {allowed} (one of them)",
            field=unknown[0],
        )
    if len(arrays) != 1:
        raise InvalidInput(f"send exactly one of the inputs {allowed}", field="inputs")
    types = {i.name: i.datatype for i in req.inputs}
    limit = s.settings.max_inputs
    if TEXT in arrays:
        arr = arrays[TEXT]
        if types[TEXT] != "BYTES":
            raise InvalidInput(f"input {TEXT!r} must be BYTES, got {types[TEXT]}", field=TEXT)
        if not (arr.ndim == 1 or (arr.ndim == 2 and arr.shape[1] == 1)) or arr.size == 0:
            raise InvalidInput(
                f"input {TEXT!r} must have shape [B] or [B, 1] with B >= 1, got {list(arr.shape)}",
                field=TEXT,
            )
        if arr.size > limit:
            raise InvalidInput(f"at most {limit} rows per request", field=TEXT)
        texts: list[str] = []
        for i, x in enumerate(arr.ravel().tolist()):
            try:
                t = x.decode("utf-8") if isinstance(x, bytes) else str(x)
            except UnicodeDecodeError:
                raise InvalidInput(
                    f"{TEXT}[{i}] is not valid UTF-8", field=f"{TEXT}[{i}]"
                ) from None
            if len(t) > s.settings.max_text_chars:
                raise InvalidInput(
                    f"{TEXT}[{i}] is {len(t)} characters; the limit is {s.settings.max_text_chars}",
                    field=f"{TEXT}[{i}]",
                )
            texts.append(t)
        return Rows(texts=texts)
    arr = arrays[TOKEN_IDS]
    if types[TOKEN_IDS] != "INT64":
        raise InvalidInput(
            f"input {TOKEN_IDS!r} must be INT64, got {types[TOKEN_IDS]}", field=TOKEN_IDS
        )
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InvalidInput(
            f"input {TOKEN_IDS!r} must have shape [B, T] with B, T >= 1, got {list(arr.shape)}",
            field=TOKEN_IDS,
        )
    if arr.shape[0] > limit or arr.shape[1] > s.settings.max_text_chars:
        raise InvalidInput(
            f"at most {limit} rows of at most {s.settings.max_text_chars} tokens", field=TOKEN_IDS
        )
    vocab = m.tokenizer.vocab_size
    if arr.min() < 0 or arr.max() >= vocab:
        raise InvalidInput(f"token ids must be in [0, {vocab})", field=TOKEN_IDS)
    return Rows(ids=arr.astype(np.int64).tolist())


async def run(
    s: Services,
    m: ModelView,
    rows: Rows,
    seq: Sequence | None,
    owner: str | None,
    ref: str | None = None,
) -> tuple[np.ndarray, ModelView]:
    """logits (B, K) float32 for each row, and the version they came from (whose outputs
    describe them: a sequence's is the version it is pinned to, whatever the default);
    `ref`: the version the request named (`name@version`), else the model's default."""
    ref = ref or m.name
    if seq is not None:
        if len(rows) != 1:
            raise InvalidInput(
                f"a sequence request carries exactly one row, got {len(rows)}",
                field=TEXT if rows.texts is not None else TOKEN_IDS,
            )
        text = rows.texts[0] if rows.texts is not None else None
        ids = rows.ids[0] if rows.ids is not None else None
        seq_ref = SequenceRef(seq.session_id, seq.label, seq.start, seq.end)
        out = await s.client.call(SequenceStep(ref, seq_ref, text, ids, owner))
        ran_on = m if out.model == m.key else s.client.catalog.decoder(out.model)
        return out.logits[None, :].astype(np.float32), ran_on
    if rows.texts is not None:
        encoded = [m.encode_full(t, f"{TEXT}[{i}]") for i, t in enumerate(rows.texts)]
    else:
        encoded = rows.ids or []
    # the very version tokenized for, whatever becomes the default meanwhile
    return await s.client.call(Logits(m.key, encoded)), m


def outputs(m: ModelView, logits: np.ndarray) -> dict[str, tuple[str, np.ndarray]]:
    """Every output of the model: name -> (datatype, array)."""
    probs = softmax(logits).astype(np.float32)  # (B, K)
    out = {PROBS: ("FP32", probs), LOGITS: ("FP32", logits)}
    if m.manifest.labels is not None:
        labels = m.manifest.labels
        arr = np.empty(len(probs), dtype=object)
        arr[:] = [labels[int(i)].encode() for i in np.argmax(probs, axis=-1)]
        out[LABEL] = ("BYTES", arr)
    return out


def wanted_outputs(m: ModelView, req: InferRequest, default_binary: bool) -> list[tuple[str, bool]]:
    """The outputs asked for (default: every one), each with whether it goes in binary."""
    order = [t.name for t in protocol.output_specs(m)]
    if req.outputs is None:
        return [(name, default_binary) for name in order]
    wanted: list[tuple[str, bool]] = []
    for o in req.outputs:
        if o.name not in order:
            raise InvalidInput(
                f"model {m.name!r} has no output {o.name!r}; its outputs: {order}", field=o.name
            )
        params = o.parameters or {}
        extra = set(params) - {"binary_data"}
        if extra:
            raise BinaryProtocolError(
                f"output {o.name!r}: unsupported parameter(s) {sorted(extra)} (classification and "
                "shared memory are not supported)",
                field=f"{o.name}.parameters",
            )
        flag = params.get("binary_data", default_binary)
        if not isinstance(flag, bool):
            raise BinaryProtocolError(
                f"output {o.name!r}: binary_data must be a boolean", field=f"{o.name}.binary_data"
            )
        wanted.append((o.name, flag))
    return wanted


def respond(answer: Answer, req: InferRequest) -> tuple[bytes, int | None]:
    """The response body (JSON header + binary parts) and its header length (None: JSON only)."""
    m = answer.model
    produced = outputs(m, answer.logits)
    wanted = answer.wanted
    entries: list[dict[str, Any]] = []
    parts: list[bytes] = []
    for name, as_binary in wanted:
        datatype, arr = produced[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if as_binary:
            raw = binary.encode_output(arr, datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            parts.append(raw)
        else:
            entry["data"] = binary.json_data(arr, datatype)
        entries.append(entry)
    header: dict[str, Any] = {"model_name": m.name, "model_version": m.manifest.version}
    if req.id is not None:
        header["id"] = req.id
    header["outputs"] = entries
    return binary.build_body(header, parts)
