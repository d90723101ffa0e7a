"""RNNModel: shapes and state tuples, exact padding, chunked == whole, peephole semantics."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from training.model import (  # noqa: E402
    CELLS,
    POOLINGS,
    ModelConfig,
    PeepholeLSTM,
    RNNModel,
    state_layout,
)
from training.model.peephole import peephole_scan  # noqa: E402
from training.model.peephole_scan import PeepholeScan  # noqa: E402

V, E, H = 13, 6, 8


def make(task: str = "next_token", cell: str = "lstm", **kw: object) -> RNNModel:
    torch.manual_seed(0)
    cfg = ModelConfig(
        task=task,
        cell=cell,
        vocab_size=V,
        embed_dim=E,
        hidden_size=H,
        num_classes=3,
        **kw,  # type: ignore[arg-type]
    )
    return RNNModel(cfg).eval()


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    return bool((a - b).abs().max() <= tol)


# -- config ------------------------------------------------------------------------------------


def test_config_roundtrip_and_errors() -> None:
    cfg = ModelConfig(task="classify", cell="gru", pooling="mean", bidirectional=True)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown keys"):
        ModelConfig.from_dict({**cfg.to_dict(), "hiden_size": 3})
    with pytest.raises(ValueError, match="bidirectional"):
        ModelConfig(task="next_token", bidirectional=True)
    with pytest.raises(ValueError, match="cell"):
        ModelConfig(cell="transformer")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tie_weights"):
        ModelConfig(tie_weights=True, embed_dim=4, hidden_size=8)


def test_tied_weights_share_the_embedding() -> None:
    cfg = ModelConfig(vocab_size=V, embed_dim=H, hidden_size=H, tie_weights=True)
    m = RNNModel(cfg)
    assert m.head.weight is m.embed.weight


# -- shapes and state tuples -------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2])
def test_next_token_shapes(cell: str, layers: int) -> None:
    m = make("next_token", cell, num_layers=layers)
    out, state = m(torch.randint(0, V, (3, 5)))
    assert out.shape == (3, 5, V)
    n = 2 if cell in ("lstm", "peephole_lstm") else 1
    assert [tuple(s.shape) for s in state] == [(layers, 3, H)] * n
    assert [s.shape(3) for s in state_layout(m.cfg)] == [tuple(s.shape) for s in state]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_classify_shapes(cell: str, pooling: str, bidirectional: bool) -> None:
    m = make("classify", cell, pooling=pooling, bidirectional=bidirectional, num_layers=2)
    out, state = m(torch.randint(0, V, (4, 6)), torch.tensor([6, 1, 3, 6]))
    assert out.shape == (4, 3)
    layout = state_layout(m.cfg)
    assert [s.shape(4) for s in layout] == [tuple(s.shape) for s in state]
    D = 2 if bidirectional else 1
    assert state[0].shape == (2 * D, 4, H)
    assert all(slot.batch_axis == 1 for slot in layout)
    fresh = m.init_state(2)
    for slot, x in zip(layout, fresh, strict=True):
        assert torch.all(x == slot.init)
    if pooling in ("max", "last_max"):
        assert layout[-1].name == "pool_max" and layout[-1].init == -math.inf


# -- exact padding -----------------------------------------------------------------------------

CASES = [("next_token", c, {}) for c in CELLS] + [
    ("classify", c, {"pooling": p, "bidirectional": bi})
    for c in CELLS
    for p in POOLINGS
    for bi in (False, True)
]


@pytest.mark.parametrize(("task", "cell", "kw"), CASES)
def test_padded_batch_equals_each_row_alone(task: str, cell: str, kw: dict[str, object]) -> None:
    m = make(task, cell, num_layers=2, **kw)
    lengths = torch.tensor([7, 2, 1, 5])
    tokens = torch.randint(0, V, (4, 7))
    tokens[1, 2:] = tokens[2, 1:] = tokens[3, 5:] = 0  # padding (pad_id 0)
    state = tuple(torch.randn_like(s) for s in m.init_state(4))
    with torch.no_grad():
        out, new = m(tokens, lengths, state)
        for b, n in enumerate(lengths.tolist()):
            one, one_new = m(tokens[b : b + 1, :n], None, tuple(s[:, b : b + 1] for s in state))
            want = out[b : b + 1, :n] if task == "next_token" else out[b : b + 1]
            assert close(one, want)
            for x, y in zip(one_new, new, strict=True):  # final state included
                assert close(x, y[:, b : b + 1])
            if task == "next_token":  # padded positions give zero RNN output, not garbage state
                assert torch.isfinite(out[b]).all()


@pytest.mark.parametrize(
    ("task", "cell", "kw"), [c for c in CASES if not c[2].get("bidirectional")]
)
def test_chunked_equals_whole(task: str, cell: str, kw: dict[str, object]) -> None:
    m = make(task, cell, num_layers=2, **kw)
    tokens = torch.randint(0, V, (2, 11))
    with torch.no_grad():
        whole, s_whole = m(tokens)
        state = None
        outs = []
        for a, b in [(0, 3), (3, 4), (4, 11)]:
            o, state = m(tokens[:, a:b], None, state)
            outs.append(o)
    assert state is not None
    last = outs[-1][:, -1] if task == "next_token" else outs[-1]
    assert close(last, whole[:, -1] if task == "next_token" else whole)
    for x, y in zip(state, s_whole, strict=True):
        assert close(x, y)


# -- peephole LSTM -----------------------------------------------------------------------------


def test_peephole_matches_hand_written_step() -> None:
    """One step written out from the equations (ONNX LSTM with P): i, f see c_{t-1}; o sees c_t."""
    torch.manual_seed(1)
    cell = PeepholeLSTM(5, 4)
    x, h0, c0 = torch.randn(2, 1, 5), torch.randn(1, 2, 4), torch.randn(1, 2, 4)
    with torch.no_grad():
        y, (h1, c1) = cell(x, (h0, c0))
        W, R = cell.weight_ih_l0, cell.weight_hh_l0
        b = cell.bias_ih_l0 + cell.bias_hh_l0
        p_i, p_f, p_o = cell.weight_peep_l0.chunk(3)
        a = x[:, 0] @ W.T + h0[0] @ R.T + b
        a_i, a_f, a_g, a_o = a.chunk(4, dim=1)  # torch gate order i, f, g, o
        i = torch.sigmoid(a_i + p_i * c0[0])
        f = torch.sigmoid(a_f + p_f * c0[0])
        c = f * c0[0] + i * torch.tanh(a_g)
        o = torch.sigmoid(a_o + p_o * c)
        h = o * torch.tanh(c)
    assert close(c1[0], c, 1e-6) and close(h1[0], h, 1e-6) and close(y[:, 0], h, 1e-6)


def test_peephole_with_zero_peepholes_is_nn_lstm() -> None:
    torch.manual_seed(2)
    ref = torch.nn.LSTM(5, 4, num_layers=2, batch_first=True)
    mine = PeepholeLSTM(5, 4, num_layers=2)
    with torch.no_grad():
        for name, p in mine.named_parameters():
            p.copy_(torch.zeros_like(p) if "peep" in name else getattr(ref, name))
        x = torch.randn(3, 6, 5)
        st = (torch.randn(2, 3, 4), torch.randn(2, 3, 4))
        y1, (h1, c1) = ref(x, st)
        y2, (h2, c2) = mine(x, st)
    assert close(y1, y2) and close(h1, h2) and close(c1, c2)


@pytest.mark.parametrize("masked", [False, True])
def test_peephole_backward_matches_autograd(masked: bool) -> None:
    """The hand-written backward of `PeepholeScan` against autograd through the reference loop."""
    torch.manual_seed(3)
    T, B, Hs = 5, 3, 4
    dd = {"dtype": torch.double}
    args = [
        torch.randn(T, B, 4 * Hs, **dd),
        torch.randn(4 * Hs, Hs, **dd),
        torch.randn(3 * Hs, **dd),
        torch.randn(B, Hs, **dd),
        torch.randn(B, Hs, **dd),
    ]
    args = [a.requires_grad_() for a in args]
    mask = (torch.arange(T)[:, None] < torch.tensor([5, 1, 3])[None])[..., None] if masked else None
    assert torch.autograd.gradcheck(lambda *a: PeepholeScan.apply(*a, mask), tuple(args))
    got = PeepholeScan.apply(*args, mask)
    want = peephole_scan(*args, mask)
    for x, y in zip(got, want, strict=True):
        assert close(x, y, 1e-12)


def test_peephole_runs_in_float32_under_autocast() -> None:
    """Mixed precision (CUDA AMP in training; bf16 autocast on CPU here) keeps the recurrence fp32."""
    m = make("next_token", "peephole_lstm")
    m.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, state = m(torch.randint(0, V, (2, 5)))
    assert all(s.dtype == torch.float32 for s in state)
    out.float().sum().backward()
    assert m.rnn.weight_peep_l0.grad is not None


@pytest.mark.parametrize("cell", ["lstm", "peephole_lstm"])
def test_forget_bias_initialises_the_forget_gate_only(cell: str) -> None:
    H = 8
    model = RNNModel(ModelConfig(cell=cell, hidden_size=H, num_layers=2, forget_bias=1.0))
    for name, p in model.rnn.named_parameters():
        if name.startswith("bias_"):
            forget = p[H : 2 * H]
            other = torch.cat([p[:H], p[2 * H :]])
            assert torch.all(forget == (1.0 if name.startswith("bias_ih") else 0.0)), name
            assert not torch.all(other == 0.0), name  # the other gates keep nn.LSTM's init


def test_forget_bias_is_refused_for_non_lstm_cells() -> None:
    with pytest.raises(ValueError, match="forget_bias"):
        ModelConfig(cell="gru", forget_bias=1.0)
