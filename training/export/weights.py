"""Torch RNN parameters -> the W / R / B / P inputs of ONNX's LSTM, GRU and RNN operators.

ONNX stacks the directions on axis 0 and orders the gates differently from torch:

    cell           torch order      ONNX order     block permutation (torch index per ONNX block)
    LSTM  W/R/B    i, f, g, o       i, o, f, c     [0, 3, 1, 2]
    LSTM  P        i, f, o (ours)   i, o, f        [0, 2, 1]
    GRU   W/R/B    r, z, n          z, r, h        [1, 0, 2]
    RNN            (one block)                     [0]

B is the input bias followed by the recurrent bias: (D, 2 * G * H). torch's GRU applies the reset
gate after the recurrent matmul (n = tanh(W x + b_in + r ⊙ (R h + b_hn))), which is ONNX's
`linear_before_reset=1`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from training.model import ModelConfig

GATE_ORDER: dict[str, list[int]] = {
    "lstm": [0, 3, 1, 2],
    "peephole_lstm": [0, 3, 1, 2],
    "gru": [1, 0, 2],
    "rnn": [0],
}
PEEP_ORDER = [0, 2, 1]


@dataclass
class LayerWeights:
    """The operator inputs for one layer (all directions): float32 numpy arrays."""

    W: np.ndarray  # (D, G*H, in)
    R: np.ndarray  # (D, G*H, H)
    B: np.ndarray  # (D, 2*G*H)
    P: np.ndarray | None  # (D, 3H), peephole LSTM only


def _reorder(t: torch.Tensor, order: list[int]) -> np.ndarray:
    """Permute gate blocks along axis 0: (G*H, ...) -> (G*H, ...) in ONNX order."""
    blocks = t.detach().float().cpu().chunk(len(order), dim=0)
    return torch.cat([blocks[i] for i in order], dim=0).numpy()


def layer_weights(rnn: nn.Module, cfg: ModelConfig, layer: int) -> LayerWeights:
    order = GATE_ORDER[cfg.cell]
    suffixes = ["", "_reverse"][: cfg.num_directions]
    Ws, Rs, Bs, Ps = [], [], [], []
    for sfx in suffixes:
        name = f"l{layer}{sfx}"
        Ws.append(_reorder(getattr(rnn, f"weight_ih_{name}"), order))
        Rs.append(_reorder(getattr(rnn, f"weight_hh_{name}"), order))
        b_ih = _reorder(getattr(rnn, f"bias_ih_{name}"), order)
        b_hh = _reorder(getattr(rnn, f"bias_hh_{name}"), order)
        Bs.append(np.concatenate([b_ih, b_hh]))
        if cfg.cell == "peephole_lstm":
            Ps.append(_reorder(getattr(rnn, f"weight_peep_{name}"), PEEP_ORDER))
    return LayerWeights(
        W=np.stack(Ws),
        R=np.stack(Rs),
        B=np.stack(Bs),
        P=np.stack(Ps) if Ps else None,
    )
