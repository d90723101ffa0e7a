"""Peephole LSTM (Gers & Schmidhuber 2000) with exactly ONNX `LSTM`'s `P` semantics.

For each layer and direction, with x_t the input and (h, c) the previous state:

    i_t = σ(W_i x_t + R_i h_{t-1} + p_i ⊙ c_{t-1} + b_i)      input gate sees the OLD cell
    f_t = σ(W_f x_t + R_f h_{t-1} + p_f ⊙ c_{t-1} + b_f)      forget gate sees the OLD cell
    g_t = tanh(W_g x_t + R_g h_{t-1} + b_g)
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
    o_t = σ(W_o x_t + R_o h_{t-1} + p_o ⊙ c_t + b_o)          output gate sees the NEW cell
    h_t = o_t ⊙ tanh(c_t)

Parameters use nn.LSTM's names and gate order (i, f, g, o), so the export maps both the same way;
the peephole vector `weight_peep_l{k}` is (3H,) in order (i, f, o).

Speed: the input projection W x_t + b for all timesteps is one matmul; only the recurrent part
(one (B, H) x (H, 4H) matmul and a few elementwise ops per step) runs in a Python loop, inside one
autograd Function with a hand-written backward (`peephole_scan.py`), about 2x faster to train
than letting autograd record every step.
Padding: with `lengths`, the state stops updating after a row's last real token (masked update),
so each row's final state equals the one it gets alone; outputs past the end are zero, as with
pad_packed_sequence.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.model.peephole_scan import PeepholeScan


def peephole_scan(
    xp: Tensor, w_hh: Tensor, peep: Tensor, h: Tensor, c: Tensor, mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Reference recurrence, differentiated by autograd step by step (slow; the model uses
    `PeepholeScan`, whose hand-written backward the tests check against this).

    xp: (T, B, 4H) = W x_t + b_ih + b_hh; w_hh: (4H, H); peep: (3H,); h, c: (B, H);
    mask: (T, B, 1) bool, True at real tokens, or None. Returns (y (T, B, H), h_T, c_T).
    """
    p_i, p_f, p_o = peep.chunk(3)  # (3H,) -> 3 x (H,)
    w_hh_t = w_hh.t()  # (4H, H) -> (H, 4H), transposed once outside the loop
    ys = []
    for t in range(xp.shape[0]):
        gates = torch.addmm(xp[t], h, w_hh_t)  # (B, 4H)
        gi, gf, gg, go = gates.chunk(4, 1)  # 4 x (B, H)
        i = torch.sigmoid(gi + p_i * c)
        f = torch.sigmoid(gf + p_f * c)
        c_new = f * c + i * torch.tanh(gg)
        o = torch.sigmoid(go + p_o * c_new)
        h_new = o * torch.tanh(c_new)  # (B, H)
        if mask is not None:
            m = mask[t]  # (B, 1): freeze the state of rows that have ended
            h = torch.where(m, h_new, h)
            c = torch.where(m, c_new, c)
            ys.append(torch.where(m, h_new, torch.zeros_like(h_new)))
        else:
            h, c = h_new, c_new
            ys.append(h_new)
    return torch.stack(ys), h, c  # (T, B, H)


def reverse_index(lengths: Tensor, total: int) -> Tensor:
    """(B, T) index that reverses each row within its own length and leaves padding in place.

    Applying it twice is the identity, so it both prepares and restores a reverse direction.
    """
    t = torch.arange(total, device=lengths.device)[None, :]  # (1, T)
    n = lengths[:, None]  # (B, 1)
    return torch.where(t < n, n - 1 - t, t)  # (B, T)


class PeepholeLSTM(nn.Module):
    """Drop-in for a batch-first nn.LSTM, plus peepholes and a `lengths` argument."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.dropout, self.bidirectional = dropout, bidirectional
        self.num_directions = 2 if bidirectional else 1
        H = hidden_size
        for layer in range(num_layers):
            layer_in = input_size if layer == 0 else H * self.num_directions
            for sfx in self.suffixes():
                name = f"l{layer}{sfx}"
                self.register_parameter(
                    f"weight_ih_{name}", nn.Parameter(torch.empty(4 * H, layer_in))
                )
                self.register_parameter(f"weight_hh_{name}", nn.Parameter(torch.empty(4 * H, H)))
                self.register_parameter(f"bias_ih_{name}", nn.Parameter(torch.empty(4 * H)))
                self.register_parameter(f"bias_hh_{name}", nn.Parameter(torch.empty(4 * H)))
                self.register_parameter(f"weight_peep_{name}", nn.Parameter(torch.empty(3 * H)))
        self.reset_parameters()

    def suffixes(self) -> list[str]:
        return ["", "_reverse"][: self.num_directions]

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)  # nn.LSTM's initialisation
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(
        self, x: Tensor, state: tuple[Tensor, Tensor], lengths: Tensor | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x: (B, T, I); state: (h0, c0) each (L*D, B, H) -> (y (B, T, D*H), (h_n, c_n))."""
        h0, c0 = state
        T = x.shape[1]
        mask = None
        rev = None
        if lengths is not None:
            lengths = lengths.to(x.device)
            steps = torch.arange(T, device=x.device)
            mask = (steps[:, None] < lengths[None, :])[..., None]  # (T, B, 1)
            if self.bidirectional:
                rev = reverse_index(lengths, T)  # (B, T)
        hs, cs = [], []
        inp = x  # (B, T, I)
        for layer in range(self.num_layers):
            outs = []
            for d, sfx in enumerate(self.suffixes()):
                name = f"l{layer}{sfx}"
                k = layer * self.num_directions + d
                src = inp
                if d == 1:  # reverse direction: reverse each row within its length
                    src = inp.flip(1) if rev is None else _gather_time(inp, rev)
                w_ih, b_ih = getattr(self, f"weight_ih_{name}"), getattr(self, f"bias_ih_{name}")
                b_hh = getattr(self, f"bias_hh_{name}")
                xp = F.linear(src, w_ih, b_ih + b_hh).transpose(0, 1)  # (B, T, I) -> (T, B, 4H)
                y, h, c = PeepholeScan.apply(
                    xp,
                    getattr(self, f"weight_hh_{name}"),
                    getattr(self, f"weight_peep_{name}"),
                    h0[k],
                    c0[k],
                    mask,
                )
                y = y.transpose(0, 1)  # (T, B, H) -> (B, T, H)
                if d == 1:
                    y = y.flip(1) if rev is None else _gather_time(y, rev)
                outs.append(y)
                hs.append(h)
                cs.append(c)
            inp = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]  # (B, T, D*H)
            if layer < self.num_layers - 1 and self.dropout > 0:
                inp = F.dropout(inp, self.dropout, self.training)
        return inp, (torch.stack(hs), torch.stack(cs))  # (L*D, B, H) each


def _gather_time(x: Tensor, index: Tensor) -> Tensor:
    """x: (B, T, F), index: (B, T) -> x[b, index[b, t], :]."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[2]))
