"""Build the ONNX graph of an `RNNModel` directly from its weights, on ONNX's native RNN operators.

    tokens (B, T) int64 --Transpose--> (T, B) --Gather(embedding)--> x (T, B, E)
    per layer l:  LSTM | GRU | RNN (x, W, R, B, sequence_lens=lengths, initial_h = h_in[l*D:(l+1)*D],
                  [initial_c], [P]) -> Y (T, D, B, H), Y_h (D, B, H), [Y_c]
                  next x = Y as (T, B, D*H)
    h_out = Concat(Y_h of every layer)             (L*D, B, H), same for c_out
    features: top layer's Y_h as (B, D*H)  and/or  pools of the top Y over real steps
    logits = Gemm(features, head.weight^T) + head.bias      (B, K)

`sequence_lens` makes each operator stop at a row's last real token, so Y_h is the state at that
token: exact padded batching, and for next_token the logits at the last real token come straight
from the top layer's Y_h (no Gather over time needed). One operator node per layer covers both
directions (`direction="bidirectional"`). Opset 17.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.contract.manifest import BATCH, IOSpec
from training.export.weights import layer_weights
from training.model import ModelConfig, RNNModel
from training.model.config import C_STATE, H_STATE, POOL_COUNT, POOL_MAX, POOL_SUM

OPSET = 17
_OP = {"lstm": "LSTM", "peephole_lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}
_SEQ = "seq"  # symbolic name of the time axis


class _Builder:
    """Collects nodes and initializers; hands out unique intermediate names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def const(self, name: str, value: Any, dtype: Any = np.float32) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def i64(self, values: list[int]) -> str:
        self._n += 1
        return self.const(f"const_{self._n}", values, np.int64)

    def op(
        self,
        op_type: str,
        inputs: list[str],
        n_out: int = 1,
        outs: list[str] | None = None,
        **attrs: Any,
    ) -> list[str]:
        self._n += 1
        outs = outs or [f"{op_type.lower()}_{self._n}_{i}" for i in range(n_out)]
        self.nodes.append(
            helper.make_node(op_type, inputs, outs, name=f"{op_type}_{self._n}", **attrs)
        )
        return outs

    def op1(self, op_type: str, inputs: list[str], out: str | None = None, **attrs: Any) -> str:
        return self.op(op_type, inputs, outs=[out] if out else None, **attrs)[0]


def build_graph(model: RNNModel, io: IOSpec) -> onnx.ModelProto:
    cfg = model.cfg  # only weights are read: the model's train/eval mode does not matter
    g = _Builder()
    D, L = cfg.num_directions, cfg.num_layers
    st = {s.name: s for s in io.states}
    has_c = C_STATE in st
    pooled = cfg.task == "classify" and cfg.pooling != "last"

    # (B, T) -> (T, B) -> (T, B, E): ONNX RNN operators want time first (layout=0).
    emb = g.const("embedding.weight", model.embed.weight.detach().float().cpu().numpy())
    x = g.op1("Gather", [emb, g.op1("Transpose", [io.tokens], perm=[1, 0])], axis=0)

    ys_h, ys_c = [], []
    for layer in range(L):
        w = layer_weights(model.rnn, cfg, layer)
        pre = f"rnn.l{layer}"
        init_h, init_c = st[H_STATE].input, st[C_STATE].input if has_c else ""
        if L > 1:  # this layer's slice of the stacked state: (L*D, B, H) -> (D, B, H)
            bounds = (g.i64([layer * D]), g.i64([(layer + 1) * D]), g.i64([0]))
            init_h = g.op1("Slice", [init_h, *bounds])
            if has_c:
                init_c = g.op1("Slice", [init_c, *bounds])
        inputs = [
            x,
            g.const(f"{pre}.W", w.W),
            g.const(f"{pre}.R", w.R),
            g.const(f"{pre}.B", w.B),
            io.lengths,
            init_h,
        ]
        if has_c:
            inputs.append(init_c)
        if w.P is not None:
            inputs.append(g.const(f"{pre}.P", w.P))
        attrs: dict[str, Any] = {
            "hidden_size": cfg.hidden_size,
            "direction": "bidirectional" if D == 2 else "forward",
        }
        if cfg.cell == "gru":
            attrs["linear_before_reset"] = 1
        if cfg.cell == "rnn":
            attrs["activations"] = ["Tanh"] * D
        need_y = layer < L - 1 or pooled
        outs = g.op(_OP[cfg.cell], inputs, n_out=3 if has_c else 2, **attrs)
        if not need_y:  # the top layer's per-step outputs are unused: let the kernel skip them
            g.nodes[-1].output[0] = ""
        ys_h.append(outs[1])
        if has_c:
            ys_c.append(outs[2])
        if need_y:  # Y (T, D, B, H) -> (T, B, D*H)
            if D == 1:
                x = g.op1("Squeeze", [outs[0], g.i64([1])])
            else:
                x = g.op1(
                    "Reshape", [g.op1("Transpose", [outs[0]], perm=[0, 2, 1, 3]), g.i64([0, 0, -1])]
                )

    def stack(parts: list[str], out: str) -> None:
        if len(parts) > 1:
            g.op1("Concat", parts, out=out, axis=0)
        else:
            g.op1("Identity", parts, out=out)

    stack(ys_h, st[H_STATE].output)
    if has_c:
        stack(ys_c, st[C_STATE].output)

    feats = []
    if cfg.task == "next_token" or cfg.pooling in ("last", "last_max"):
        # top layer's final state, directions side by side: (D, B, H) -> (B, D, H) -> (B, D*H)
        top = g.op1("Transpose", [ys_h[-1]], perm=[1, 0, 2])
        feats.append(g.op1("Reshape", [top, g.i64([0, -1])]))
    if pooled:
        feats += _pools(g, cfg, io, x)
    feat = feats[0] if len(feats) == 1 else g.op1("Concat", feats, axis=1)
    head_w = (
        emb
        if cfg.tie_weights
        else g.const("head.weight", model.head.weight.detach().float().cpu().numpy())
    )
    head_b = g.const("head.bias", model.head.bias.detach().float().cpu().numpy())
    g.op1("Gemm", [feat, head_w, head_b], out=io.logits, transB=1)  # (B, F) -> (B, K)

    graph = helper.make_graph(
        g.nodes, f"rnnserve_{cfg.task}_{cfg.cell}", _inputs(io), _outputs(io, cfg), g.inits
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="rnnserve"
    )
    proto.ir_version = 8  # opset 17's IR version: loadable by older onnxruntime releases too
    return proto


def _pools(g: _Builder, cfg: ModelConfig, io: IOSpec, y: str) -> list[str]:
    """Pools of the top layer's outputs y (T, B, F) over the real steps, merged with the state."""
    st = {s.name: s for s in io.states}
    seq_len = g.op1("Gather", [g.op1("Shape", [io.tokens]), g.const("seq_axis", 1, np.int64)])
    steps = g.op1(
        "Range", [g.const("zero_i64", 0, np.int64), seq_len, g.const("one_i64", 1, np.int64)]
    )  # (T,) = 0, 1, ..., T-1
    steps = g.op1("Reshape", [steps, g.i64([-1, 1])])  # (T, 1)
    lens64 = g.op1("Cast", [io.lengths], to=TensorProto.INT64)  # (B,)
    real = g.op1("Unsqueeze", [g.op1("Less", [steps, lens64]), g.i64([2])])  # (T, B, 1)
    feats = []
    if cfg.pooling in ("max", "last_max"):
        masked = g.op1("Where", [real, y, g.const("neg_inf", -math.inf)])
        chunk = g.op1("ReduceMax", [masked], axes=[0], keepdims=1)  # (1, B, F)
        out = g.op1("Max", [st[POOL_MAX].input, chunk], out=st[POOL_MAX].output)
        feats.append(g.op1("Squeeze", [out, g.i64([0])]))
    if cfg.pooling == "mean":
        masked = g.op1("Where", [real, y, g.const("zero_f", 0.0)])
        chunk = g.op1("ReduceSum", [masked, g.i64([0])], keepdims=1)  # (1, B, F)
        total = g.op1("Add", [st[POOL_SUM].input, chunk], out=st[POOL_SUM].output)
        n = g.op1("Reshape", [g.op1("Cast", [io.lengths], to=TensorProto.FLOAT), g.i64([1, -1, 1])])
        count = g.op1("Add", [st[POOL_COUNT].input, n], out=st[POOL_COUNT].output)
        feats.append(g.op1("Squeeze", [g.op1("Div", [total, count]), g.i64([0])]))
    return feats


def _dims(shape: list[int | str]) -> list[int | str]:
    return [d if isinstance(d, int) else BATCH for d in shape]


def _inputs(io: IOSpec) -> list[onnx.ValueInfoProto]:
    vi = [
        helper.make_tensor_value_info(io.tokens, TensorProto.INT64, [BATCH, _SEQ]),
        helper.make_tensor_value_info(io.lengths, TensorProto.INT32, [BATCH]),
    ]
    vi += [
        helper.make_tensor_value_info(s.input, TensorProto.FLOAT, _dims(list(s.shape)))
        for s in io.states
    ]
    return vi


def _outputs(io: IOSpec, cfg: ModelConfig) -> list[onnx.ValueInfoProto]:
    vi = [helper.make_tensor_value_info(io.logits, TensorProto.FLOAT, [BATCH, cfg.num_outputs])]
    vi += [
        helper.make_tensor_value_info(s.output, TensorProto.FLOAT, _dims(list(s.shape)))
        for s in io.states
    ]
    return vi
