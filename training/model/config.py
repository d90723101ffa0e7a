"""`ModelConfig` and the layout of the recurrent state it implies.

The state layout is defined here once: the torch model builds its fresh state from it and the
ONNX export derives the graph's state inputs/outputs (and the manifest's `io.states`) from it, so
state names, shapes and fill values are never written twice.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

TaskName = Literal["classify", "next_token"]
CellName = Literal["lstm", "gru", "rnn", "peephole_lstm"]
Pooling = Literal["last", "max", "mean", "last_max"]

# Logical state names, written only here; graph tensor names derive from them ("h" -> h_in/h_out).
H_STATE, C_STATE = "h", "c"
POOL_MAX, POOL_SUM, POOL_COUNT = "pool_max", "pool_sum", "pool_count"

CELLS: tuple[str, ...] = ("lstm", "gru", "rnn", "peephole_lstm")
TASKS: tuple[str, ...] = ("classify", "next_token")
POOLINGS: tuple[str, ...] = ("last", "max", "mean", "last_max")


@dataclass
class ModelConfig:
    """Architecture of an `RNNModel`; saved inside every checkpoint (`to_dict`)."""

    task: TaskName = "next_token"
    cell: CellName = "lstm"
    vocab_size: int = 65
    embed_dim: int = 64
    hidden_size: int = 128
    num_layers: int = 1
    dropout: float = 0.0  # between stacked layers and before the head (Zaremba et al. 2014)
    embed_dropout: float = 0.0
    bidirectional: bool = False  # classify only: a streaming session needs a causal model
    num_classes: int = 2  # classify only
    pooling: Pooling = "last"  # classify only
    pad_id: int = 0
    tie_weights: bool = False  # next_token only; needs embed_dim == hidden_size
    # LSTM cells only: initial forget-gate bias (Gers et al. 2000; Jozefowicz et al. 2015 found
    # 1.0 closes most of the LSTM/GRU gap early in training). An initialisation, not architecture:
    # the exported graph is the same either way.
    forget_bias: float = 0.0

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"ModelConfig: {msg}")

        need(self.task in TASKS, f"task must be one of {TASKS}, got {self.task!r}")
        need(self.cell in CELLS, f"cell must be one of {CELLS}, got {self.cell!r}")
        need(self.pooling in POOLINGS, f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        for name in ("vocab_size", "embed_dim", "hidden_size", "num_layers"):
            need(int(getattr(self, name)) >= 1, f"{name} must be >= 1")
        for name in ("dropout", "embed_dropout"):
            need(0.0 <= float(getattr(self, name)) < 1.0, f"{name} must be in [0, 1)")
        need(0 <= self.pad_id < self.vocab_size, "pad_id must be a valid token id")
        if self.task == "next_token":
            need(not self.bidirectional, "bidirectional is for classify only (not causal)")
            need(self.pooling == "last", "pooling is for classify only")
        else:
            need(self.num_classes >= 2, "num_classes must be >= 2")
            need(not self.tie_weights, "tie_weights is for next_token only")
        need(
            self.forget_bias == 0.0 or self.cell in ("lstm", "peephole_lstm"),
            "forget_bias is for LSTM cells only",
        )
        if self.tie_weights:
            need(self.embed_dim == self.hidden_size, "tie_weights needs embed_dim == hidden_size")

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def feature_size(self) -> int:
        """Width of the top layer's output at one timestep: (B, T, D*H)."""
        return self.num_directions * self.hidden_size

    @property
    def head_in(self) -> int:
        return 2 * self.feature_size if self.pooling == "last_max" else self.feature_size

    @property
    def num_outputs(self) -> int:
        return self.vocab_size if self.task == "next_token" else self.num_classes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"ModelConfig: unknown keys {unknown}")
        return cls(**data)


@dataclass(frozen=True)
class StateSlot:
    """One recurrent state tensor. `dims` has None where the batch goes (always axis 1)."""

    name: str
    dims: tuple[int | None, ...]
    init: float = 0.0
    positive: bool = False  # a token count: any carried value is > 0 (tests draw states from this)
    divisor: str | None = None  # a running sum, used (and compared) divided by this count state

    @property
    def batch_axis(self) -> int:
        return self.dims.index(None)

    def shape(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d is None else d for d in self.dims)


def state_layout(cfg: ModelConfig) -> list[StateSlot]:
    """The state tuple of `RNNModel.forward`, in order: RNN state, then pooling accumulators.

    RNN state has ONNX's layout (layers*directions, B, H) so it feeds the LSTM/GRU/RNN operators'
    `initial_h` / `initial_c` per layer with a slice. A max pool carries its running max (fresh:
    -inf); a mean pool carries the running sum and the count of tokens seen.
    """
    rnn_dims = (cfg.num_layers * cfg.num_directions, None, cfg.hidden_size)
    slots = [StateSlot(H_STATE, rnn_dims)]
    if cfg.cell in ("lstm", "peephole_lstm"):
        slots.append(StateSlot(C_STATE, rnn_dims))
    if cfg.task == "classify":
        feat = (1, None, cfg.feature_size)
        if cfg.pooling in ("max", "last_max"):
            slots.append(StateSlot(POOL_MAX, feat, init=-math.inf))
        if cfg.pooling == "mean":
            slots.append(StateSlot(POOL_SUM, feat, divisor=POOL_COUNT))
            slots.append(StateSlot(POOL_COUNT, (1, None, 1), positive=True))
    return slots


def num_rnn_states(cfg: ModelConfig) -> int:
    return 2 if cfg.cell in ("lstm", "peephole_lstm") else 1
