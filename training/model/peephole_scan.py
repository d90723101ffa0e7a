"""The peephole LSTM recurrence as one autograd Function with a hand-written backward.

Why: letting autograd record the per-step loop costs ~10 small nodes per timestep and a backward
that walks them one by one. Here the forward saves each step's gate activations and states, and
the backward is a single reverse loop of elementwise maths plus ONE (B, 4H) x (4H, H) matmul per
step; the weight gradients are then two large matmuls / reductions over all timesteps at once
(what cuDNN does for nn.LSTM). See `peephole.py` for the equations.

Backward, per step t (m = 1 at real tokens, 0 at padding; the state passes through padding):
    dh_new = m ⊙ (dh_t + dy_t)                 dc_new = m ⊙ dc_t + dh_new ⊙ o ⊙ (1 - tanh²(c_new))
    da_o = dh_new ⊙ tanh(c_new) ⊙ o(1-o)       dc_new += da_o ⊙ p_o
    da_i = dc_new ⊙ g ⊙ i(1-i)    da_f = dc_new ⊙ c_{t-1} ⊙ f(1-f)    da_g = dc_new ⊙ i ⊙ (1-g²)
    dc_{t-1} = dc_new ⊙ f + da_i ⊙ p_i + da_f ⊙ p_f + (1-m) ⊙ dc_t
    dh_{t-1} = [da_i, da_f, da_g, da_o] R + (1-m) ⊙ dh_t
and, summed over all steps: dR = Σ_t da_tᵀ h_{t-1}, dp_i = Σ da_i ⊙ c_{t-1}, dp_f = Σ da_f ⊙ c_{t-1},
dp_o = Σ da_o ⊙ c_new, d(xp_t) = da_t.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def _forward_loop(
    xp: Tensor, w_hh: Tensor, peep: Tensor, h: Tensor, c: Tensor, mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns y (T,B,H), h_T, c_T and, for the backward: acts (T,B,4H) = [i, f, g, o] after
    their nonlinearities, h_prev (T,B,H), c_prev (T,B,H), c_new (T,B,H)."""
    T, B, G = xp.shape
    H = G // 4
    p_i, p_f, p_o = peep.chunk(3)  # (3H,) -> 3 x (H,)
    w_t = w_hh.t()  # (4H, H) -> (H, 4H)
    acts = xp.new_empty(T, B, G)
    h_prev, c_prev, c_new_all = xp.new_empty(T, B, H), xp.new_empty(T, B, H), xp.new_empty(T, B, H)
    y = xp.new_empty(T, B, H)
    for t in range(T):
        h_prev[t], c_prev[t] = h, c
        a = torch.addmm(xp[t], h, w_t)  # (B, 4H) pre-activations
        act = acts[t]  # (B, 4H) view: filled in place
        torch.sigmoid(a[:, :H] + p_i * c, out=act[:, :H])  # i sees c_{t-1}
        torch.sigmoid(a[:, H : 2 * H] + p_f * c, out=act[:, H : 2 * H])  # f sees c_{t-1}
        torch.tanh(a[:, 2 * H : 3 * H], out=act[:, 2 * H : 3 * H])  # g
        c_new = act[:, H : 2 * H] * c + act[:, :H] * act[:, 2 * H : 3 * H]  # (B, H)
        torch.sigmoid(a[:, 3 * H :] + p_o * c_new, out=act[:, 3 * H :])  # o sees c_t
        h_new = act[:, 3 * H :] * torch.tanh(c_new)  # (B, H)
        c_new_all[t] = c_new
        if mask is None:
            h, c = h_new, c_new
            y[t] = h_new
        else:
            m = mask[t]  # (B, 1) bool: rows past their length keep their state
            h = torch.where(m, h_new, h)
            c = torch.where(m, c_new, c)
            y[t] = torch.where(m, h_new, 0.0)
    return y, h, c, acts, h_prev, c_prev, c_new_all


class PeepholeScan(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        xp: Tensor,
        w_hh: Tensor,
        peep: Tensor,
        h0: Tensor,
        c0: Tensor,
        mask: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        y, h, c, acts, h_prev, c_prev, c_new = _forward_loop(xp, w_hh, peep, h0, c0, mask)
        ctx.save_for_backward(w_hh, peep, acts, h_prev, c_prev, c_new, mask)
        ctx.has_mask = mask is not None
        return y, h, c

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, dy: Tensor | None, dh_T: Tensor | None, dc_T: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        w_hh, peep, acts, h_prev, c_prev, c_new, mask = ctx.saved_tensors
        T, B, G = acts.shape
        H = G // 4
        p_i, p_f, p_o = peep.chunk(3)
        dh = dh_T if dh_T is not None else acts.new_zeros(B, H)
        dc = dc_T if dc_T is not None else acts.new_zeros(B, H)
        dacts = acts.new_empty(T, B, G)  # d(pre-activation) per step == d(xp)
        tc_all = torch.tanh(c_new)  # (T, B, H)
        for t in range(T - 1, -1, -1):
            i, f, g, o = acts[t].split(H, dim=1)
            tc = tc_all[t]
            dh_new = dh if dy is None else dh + dy[t]
            dc_new = dc
            if ctx.has_mask:
                m = mask[t].to(acts.dtype)  # (B, 1)
                dh_new, dc_new = dh_new * m, dc * m
                dh_pass, dc_pass = dh * (1 - m), dc * (1 - m)
            da = dacts[t]
            da_i, da_f, da_g, da_o = da.split(H, dim=1)
            torch.mul(dh_new * tc, o * (1 - o), out=da_o)
            dc_new = dc_new + dh_new * o * (1 - tc * tc) + da_o * p_o
            torch.mul(dc_new * g, i * (1 - i), out=da_i)
            torch.mul(dc_new * c_prev[t], f * (1 - f), out=da_f)
            torch.mul(dc_new * i, 1 - g * g, out=da_g)
            dc = dc_new * f + da_i * p_i + da_f * p_f
            dh = da @ w_hh  # (B, 4H) x (4H, H) -> (B, H)
            if ctx.has_mask:
                dh, dc = dh + dh_pass, dc + dc_pass
        flat = dacts.reshape(T * B, G)
        dw_hh = flat.t() @ h_prev.reshape(T * B, H)  # (4H, T*B) x (T*B, H) -> (4H, H)
        dp = torch.cat(
            [
                (dacts[..., :H] * c_prev).sum((0, 1)),
                (dacts[..., H : 2 * H] * c_prev).sum((0, 1)),
                (dacts[..., 3 * H :] * c_new).sum((0, 1)),
            ]
        )  # (3H,)
        return dacts, dw_hh, dp, dh, dc, None
