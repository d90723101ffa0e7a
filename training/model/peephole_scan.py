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
    xp: Tensor, w_hh: Tensor, peep: Tensor, h0: Tensor, c0: Tensor, mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns y (T,B,H), h_T, c_T and, for the backward: acts (T,B,4H) = [i, f, g, o] after
    their nonlinearities, h_prev (T,B,H), c_prev (T,B,H), c_new (T,B,H).

    About ten kernels per step: results are written in place into preallocated buffers, and the
    i and f gates (both peeking at c_{t-1}) are computed together as a (B, 2, H) view.
    """
    T, B, G = xp.shape
    H = G // 4
    p_if, p_o = peep[: 2 * H].view(2, H), peep[2 * H :]  # (2, H) for i and f, (H,) for o
    w_t = w_hh.t()  # (4H, H) -> (H, 4H)
    acts = xp.new_empty(T, B, G)
    hs, cs = xp.new_empty(T + 1, B, H), xp.new_empty(T + 1, B, H)  # carried state; hs[t] = h_{t-1}
    hs[0], cs[0] = h0, c0
    if mask is not None:  # rows past their length keep their state: new values go elsewhere
        y, c_new_all = xp.new_empty(T, B, H), xp.new_empty(T, B, H)
    for t in range(T):
        h, c = hs[t], cs[t]
        a = torch.addmm(xp[t], h, w_t)  # (B, 4H) pre-activations
        act = acts[t]  # (B, 4H), written in place
        i, f, g, o = act[:, :H], act[:, H : 2 * H], act[:, 2 * H : 3 * H], act[:, 3 * H :]
        a_if = torch.addcmul(a[:, : 2 * H].view(B, 2, H), p_if, c.unsqueeze(1))  # + p ⊙ c_{t-1}
        torch.sigmoid(a_if, out=act[:, : 2 * H].view(B, 2, H))
        torch.tanh(a[:, 2 * H : 3 * H], out=g)
        c_new = cs[t + 1] if mask is None else c_new_all[t]
        torch.mul(f, c, out=c_new).addcmul_(i, g)  # c_t = f ⊙ c_{t-1} + i ⊙ g
        torch.sigmoid(torch.addcmul(a[:, 3 * H :], p_o, c_new), out=o)  # o sees c_t
        h_new = hs[t + 1] if mask is None else y[t]
        torch.mul(o, torch.tanh(c_new), out=h_new)
        if mask is not None:
            m = mask[t]  # (B, 1) bool
            torch.where(m, h_new, h, out=hs[t + 1])
            torch.where(m, c_new, c, out=cs[t + 1])
            h_new.mul_(m)  # outputs past a row's end are zero, as with pad_packed_sequence
    if mask is None:
        y, c_new_all = hs[1:].clone(), cs[1:]
    return y, hs[T].clone(), cs[T].clone(), acts, hs[:-1], cs[:-1], c_new_all


class PeepholeScan(torch.autograd.Function):
    # Under mixed precision the recurrence runs in float32: the cell state accumulates over the
    # whole sequence, and the in-place `out=` writes below need one dtype throughout.
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
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
    @torch.amp.custom_bwd(device_type="cuda")
    @torch.amp.custom_bwd(device_type="cpu")
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, dy: Tensor | None, dh_T: Tensor | None, dc_T: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        w_hh, peep, acts, h_prev, c_prev, c_new, mask = ctx.saved_tensors
        T, B, G = acts.shape
        H = G // 4
        p_if, p_o = peep[: 2 * H].view(2, H), peep[2 * H :]
        dh = dh_T if dh_T is not None else acts.new_zeros(B, H)
        dc = dc_T if dc_T is not None else acts.new_zeros(B, H)
        # Everything that does not depend on the incoming gradients, for all steps at once.
        i, f, g, o = acts.split(H, dim=2)  # 4 x (T, B, H)
        tc = torch.tanh(c_new)
        k_o = tc * o * (1 - o)  # da_o = dh_new ⊙ k_o
        k_c = o * (1 - tc * tc)  # dc_new += dh_new ⊙ k_c
        k_if = torch.cat([g * i * (1 - i), c_prev * f * (1 - f)], dim=2).view(T, B, 2, H)
        k_g = i * (1 - g * g)
        keep = None if mask is None else mask.to(acts.dtype)  # (T, B, 1)
        dacts = acts.new_empty(T, B, G)  # d(pre-activations) per step == d(xp)
        for t in range(T - 1, -1, -1):
            dh_new = dh if dy is None else dh + dy[t]
            dc_new = dc
            if keep is not None:  # padding: the state passed through unchanged
                dh_new, dc_new = dh_new * keep[t], dc * keep[t]
                dh_pass, dc_pass = dh - dh * keep[t], dc - dc * keep[t]
            da = dacts[t]
            da_o = torch.mul(dh_new, k_o[t], out=da[:, 3 * H :])
            dc_new = torch.addcmul(dc_new, dh_new, k_c[t]).addcmul_(da_o, p_o)
            da_if = torch.mul(dc_new.unsqueeze(1), k_if[t], out=da[:, : 2 * H].view(B, 2, H))
            torch.mul(dc_new, k_g[t], out=da[:, 2 * H : 3 * H])
            dc = (da_if * p_if).sum(1).addcmul_(dc_new, f[t])  # peepholes + forget path
            dh = torch.mm(da, w_hh)  # (B, 4H) x (4H, H) -> (B, H)
            if keep is not None:
                dh, dc = dh + dh_pass, dc + dc_pass
        flat = dacts.view(T * B, G)
        dw_hh = flat.t() @ h_prev.reshape(T * B, H)  # (4H, T*B) x (T*B, H) -> (4H, H)
        dp_if = (dacts[..., : 2 * H].view(T, B, 2, H) * c_prev.unsqueeze(2)).sum((0, 1))  # (2, H)
        dp_o = (dacts[..., 3 * H :] * c_new).sum((0, 1))  # (H,)
        return dacts, dw_hh, torch.cat([dp_if.reshape(-1), dp_o]), dh, dc, None
