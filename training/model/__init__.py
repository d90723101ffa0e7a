"""The sequence models: config, the peephole LSTM, and `RNNModel`."""

from __future__ import annotations

from training.model.config import (
    CELLS,
    POOLINGS,
    TASKS,
    ModelConfig,
    StateSlot,
    num_rnn_states,
    state_layout,
)
from training.model.network import RNNModel, State
from training.model.peephole import PeepholeLSTM

__all__ = [
    "CELLS",
    "POOLINGS",
    "TASKS",
    "ModelConfig",
    "PeepholeLSTM",
    "RNNModel",
    "State",
    "StateSlot",
    "num_rnn_states",
    "state_layout",
]
