"""`ModelManifest`: everything the server needs to know about an exported model.

The graph contract (firm, see docs/models.md):

    (tokens int64[B, T], lengths int32[B], *state_in) -> (logits float32[B, K], *state_out)

* `lengths[b]` is the number of real tokens in row b (1 <= lengths[b] <= T); padding is ignored
  exactly, final state included.
* `logits` is taken at each row's last real token: K = number of labels for `classify`, the
  vocabulary size for `next_token`.
* Every recurrent quantity (h, c, running pools) is a state tensor listed in `io.states`, with
  the batch on `batch_axis` (axis 1 for RNN state, as in ONNX's LSTM/GRU/RNN operators).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

SCHEMA_VERSION = 1

Task = Literal["classify", "next_token"]
Cell = Literal["lstm", "gru", "rnn", "peephole_lstm"]
BATCH = "batch"  # the symbolic batch dimension in state shapes


class _Strict(BaseModel):
    # -inf (a max pool's initial value) is written as the string "-Infinity": standard JSON
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="strings")


class StateTensor(_Strict):
    """One recurrent state tensor carried between calls (and between session requests)."""

    name: str = Field(description="Logical name, e.g. 'h' or 'c'.")
    input: str = Field(description="Graph input that receives the state.")
    output: str = Field(description="Graph output that returns the new state.")
    dtype: Literal["float32", "float16"] = "float32"
    shape: list[int | Literal["batch"]] = Field(
        description="Shape with 'batch' for the batch axis."
    )
    batch_axis: int = Field(ge=0)
    init: float = Field(0.0, description="Fill value of a fresh state (e.g. -inf for a max pool).")

    @model_validator(mode="after")
    def _batch_axis_is_symbolic(self) -> StateTensor:
        if self.batch_axis >= len(self.shape) or self.shape[self.batch_axis] != BATCH:
            raise ValueError(f"state {self.name!r}: shape[{self.batch_axis}] must be 'batch'")
        if sum(1 for d in self.shape if d == BATCH) != 1:
            raise ValueError(f"state {self.name!r}: exactly one 'batch' dimension expected")
        return self

    def concrete_shape(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == BATCH else int(d) for d in self.shape)

    def zeros(self, batch: int) -> np.ndarray:
        """A fresh state for `batch` rows."""
        return np.full(self.concrete_shape(batch), self.init, dtype=np.dtype(self.dtype))

    def row_nbytes(self) -> int:
        return int(np.prod(self.concrete_shape(1))) * np.dtype(self.dtype).itemsize


class IOSpec(_Strict):
    tokens: str = "tokens"
    lengths: str = "lengths"
    logits: str = "logits"
    states: list[StateTensor]

    @model_validator(mode="after")
    def _unique_names(self) -> IOSpec:
        names = [self.tokens, self.lengths, self.logits]
        for s in self.states:
            names += [s.input, s.output]
        if len(names) != len(set(names)):
            raise ValueError("tensor names in io must be unique")
        return self

    def input_names(self) -> list[str]:
        return [self.tokens, self.lengths, *(s.input for s in self.states)]

    def output_names(self) -> list[str]:
        return [self.logits, *(s.output for s in self.states)]


class CharTokenizerSpec(_Strict):
    kind: Literal["char"] = "char"
    vocab: list[str] = Field(description="One character per id, in id order.")
    unk_token: str | None = Field(
        None,
        description="Vocabulary entry used for unseen characters; None means unseen characters "
        "are an error (the server answers 422 naming them).",
    )

    @model_validator(mode="after")
    def _single_chars(self) -> CharTokenizerSpec:
        if len(set(self.vocab)) != len(self.vocab):
            raise ValueError("char vocab has duplicates")
        for ch in self.vocab:
            if len(ch) != 1 and ch != self.unk_token:
                raise ValueError(f"char vocab entry {ch!r} is not one character")
        if self.unk_token is not None and self.unk_token not in self.vocab:
            raise ValueError("unk_token must be in the vocab")
        return self


class WordTokenizerSpec(_Strict):
    kind: Literal["word"] = "word"
    tokenizer_json: dict[str, Any] = Field(
        description="The HF `tokenizers` JSON (WordLevel model). Served by a pure-Python "
        "reimplementation of the exact pipeline, so the server needs no `tokenizers` package."
    )


TokenizerSpec = Annotated[CharTokenizerSpec | WordTokenizerSpec, Field(discriminator="kind")]


class SamplingDefaults(_Strict):
    temperature: float = Field(0.8, ge=0.0)
    top_k: int | None = Field(None, ge=1)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(200, ge=1)
    prime_text: str = Field(
        "\n", description="Context fed before generating when a request has no prompt and no state."
    )


class TrainingSummary(_Strict):
    model_config = ConfigDict(extra="allow", frozen=True, ser_json_inf_nan="strings")
    config: dict[str, Any] = Field(default_factory=dict)
    dataset: str = ""
    metrics: dict[str, float] = Field(default_factory=dict)
    git_commit: str | None = None
    parameters: int | None = None
    device: str | None = None
    train_seconds: float | None = None


class Variant(_Strict):
    """An alternative graph for the same model (int8 for CPU, fp16 for GPU)."""

    name: Literal["int8", "fp16"]
    file: str
    sha256: str
    metric: str = Field(description="Metric compared against the fp32 graph, e.g. 'accuracy'.")
    fp32_value: float
    value: float
    tolerance: float
    state_dtype: Literal["float32", "float16"] = Field(
        "float32",
        description="The dtype of this graph's state inputs and outputs (the fp16 variant's, "
        "float16 when exported with `--state-dtype float16`): what its sessions, decode batch "
        "and state blobs hold. float16 halves a row's bytes on the device and in the store.",
    )

    @model_serializer(mode="wrap")
    def _omit_float32_state(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # written only when it says something: a manifest whose variants keep float32 state
        # stays readable by servers from before the field (their manifests forbid extra keys)
        data: dict[str, Any] = handler(self)
        if data.get("state_dtype") == "float32":
            del data["state_dtype"]
        return data


class ModelManifest(_Strict):
    schema_version: int = Field(SCHEMA_VERSION, description="Refused when not understood.")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    version: str = "1"
    task: Task
    cell: Cell
    num_layers: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    tokenizer: TokenizerSpec
    io: IOSpec
    labels: list[str] | None = Field(None, description="Classifier labels in logits order.")
    sampling: SamplingDefaults = SamplingDefaults()
    onnx_file: str = "model.onnx"
    onnx_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    streamable: bool = Field(
        True,
        description="False for bidirectional encoders: their output depends on the future, so "
        "sessions (chunked feeding) are refused.",
    )
    variants: list[Variant] = Field(default_factory=list)
    training: TrainingSummary = TrainingSummary()

    @model_validator(mode="after")
    def _task_fields(self) -> ModelManifest:
        if self.task == "classify" and not self.labels:
            raise ValueError("a classify model needs labels")
        if self.task == "next_token" and self.labels:
            raise ValueError("a next_token model has no labels")
        return self

    def served_as(self, variant: Variant) -> ModelManifest:
        """This manifest as `variant`'s graph is served: its state tensors in the variant's
        dtype (everything else is the model's)."""
        if all(s.dtype == variant.state_dtype for s in self.io.states):
            return self
        states = [s.model_copy(update={"dtype": variant.state_dtype}) for s in self.io.states]
        return self.model_copy(update={"io": self.io.model_copy(update={"states": states})})

    def state_nbytes_per_row(self) -> int:
        return sum(s.row_nbytes() for s in self.io.states)

    def init_states(self, batch: int) -> list[np.ndarray]:
        return [s.zeros(batch) for s in self.io.states]
