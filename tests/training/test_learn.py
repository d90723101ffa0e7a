"""Every cell learns tiny tasks to near-zero loss in seconds, through our loss functions."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from training.config import OptimConfig  # noqa: E402
from training.model import ModelConfig, RNNModel  # noqa: E402
from training.optim import build_optimizer, clip_gradients  # noqa: E402

CELLS = ["lstm", "gru", "rnn", "peephole_lstm"]


@pytest.mark.parametrize("cell", CELLS)
def test_hello_to_ello(cell: str) -> None:
    """The classic char-rnn example: after h-e-l-l predict e-l-l-o (the two l's differ by context)."""
    torch.manual_seed(0)
    vocab = {c: i for i, c in enumerate("helo")}
    x = torch.tensor([[vocab[c] for c in "hell"]])  # (1, 4)
    y = torch.tensor([vocab[c] for c in "ello"])  # (4,)
    model = RNNModel(
        ModelConfig(task="next_token", cell=cell, vocab_size=4, embed_dim=8, hidden_size=16)
    )  # type: ignore[arg-type]
    oc = OptimConfig(lr=0.05, weight_decay=0.0)
    opt = build_optimizer(model, oc)
    for _ in range(150):
        logits, _ = model(x)  # (1, 4, V)
        loss = torch.nn.functional.cross_entropy(logits[0], y)
        opt.zero_grad()
        loss.backward()
        clip_gradients(model.parameters(), oc)
        opt.step()
    assert loss.item() < 0.02
    assert model(x)[0][0].argmax(-1).tolist() == y.tolist()


@pytest.mark.parametrize("cell", CELLS)
def test_classify_first_token_parity_padded(cell: str) -> None:
    """Classify variable-length padded rows by their first token: needs memory + exact lengths."""
    torch.manual_seed(0)
    B, T = 16, 6
    lengths = torch.randint(2, T + 1, (B,))
    tokens = torch.randint(2, 5, (B, T))  # ids 2..4; 0 is padding
    tokens[torch.arange(T)[None, :] >= lengths[:, None]] = 0
    labels = tokens[:, 0] % 2
    cfg = ModelConfig(
        task="classify",
        cell=cell,
        vocab_size=5,
        embed_dim=8,
        hidden_size=16,  # type: ignore[arg-type]
        num_classes=2,
        pooling="last",
    )
    model = RNNModel(cfg)
    oc = OptimConfig(lr=0.03, weight_decay=0.0)
    opt = build_optimizer(model, oc)
    for _ in range(200):
        logits, _ = model(tokens, lengths)  # (B, 2)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
