"""`RNNModel`: embedding -> stacked LSTM / GRU / tanh-RNN / peephole LSTM -> linear head.

    forward(tokens (B, T), lengths (B,) | None, state | None) -> (out, state)

* next_token: out = logits at every step (B, T, V).
* classify:   out = logits (B, C) from the final state at each row's last real token ("last"),
  or from a pool over the top layer's outputs ("max", "mean", "last_max").

`state` is the tuple described by `state_layout(cfg)`: (h, c) for LSTMs, (h,) for GRU/RNN, each
(L*D, B, H); then any pooling accumulators (1, B, D*H). Feeding a text in chunks and carrying the
state equals feeding it whole (for unidirectional models). With `lengths`, padding is exact: each
row's outputs and final state are what it gets alone (packed sequences / masked updates).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from training.model.config import ModelConfig, num_rnn_states, state_layout
from training.model.peephole import PeepholeLSTM

State = tuple[Tensor, ...]


class RNNModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.embed_drop = nn.Dropout(cfg.embed_dropout)
        inter = cfg.dropout if cfg.num_layers > 1 else 0.0  # nn.RNNBase warns on 1 layer + dropout
        self.rnn: nn.Module
        if cfg.cell == "peephole_lstm":
            self.rnn = PeepholeLSTM(
                cfg.embed_dim, cfg.hidden_size, cfg.num_layers, inter, cfg.bidirectional
            )
        else:
            kwargs = {"batch_first": True, "dropout": inter, "bidirectional": cfg.bidirectional}
            args = (cfg.embed_dim, cfg.hidden_size, cfg.num_layers)
            if cfg.cell == "lstm":
                self.rnn = nn.LSTM(*args, **kwargs)
            elif cfg.cell == "gru":
                self.rnn = nn.GRU(*args, **kwargs)
            else:
                self.rnn = nn.RNN(*args, nonlinearity="tanh", **kwargs)
        if cfg.forget_bias:
            self._init_forget_bias(cfg.forget_bias)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.head_in, cfg.num_outputs)
        if cfg.tie_weights:  # Press & Wolf 2017: share the input and output embeddings
            self.head.weight = self.embed.weight

    @torch.no_grad()
    def _init_forget_bias(self, value: float) -> None:
        """Set every LSTM layer's forget-gate bias to `value` (gate order i, f, g, o)."""
        H = self.cfg.hidden_size
        for name, p in self.rnn.named_parameters():
            if name.startswith("bias_ih"):
                p[H : 2 * H].fill_(value)  # (4H,): the f slice
            elif name.startswith("bias_hh"):
                p[H : 2 * H].zero_()  # the two biases add; keep the sum exactly `value`

    def init_state(self, batch: int, device: torch.device | str | None = None) -> State:
        """A fresh state for `batch` rows (zeros; -inf for a running max)."""
        if device is None:
            device = self.embed.weight.device
        return tuple(
            torch.full(s.shape(batch), s.init, device=device) for s in state_layout(self.cfg)
        )

    def forward(
        self, tokens: Tensor, lengths: Tensor | None = None, state: State | None = None
    ) -> tuple[Tensor, State]:
        cfg = self.cfg
        if state is None:
            state = self.init_state(tokens.shape[0], tokens.device)
        n_rnn = num_rnn_states(cfg)
        rnn_state, pool_state = state[:n_rnn], state[n_rnn:]

        x = self.embed_drop(self.embed(tokens))  # (B, T) -> (B, T, E)
        y, new_rnn = self._recur(x, lengths, rnn_state)  # y: (B, T, D*H)

        if cfg.task == "next_token":
            return self.head(self.drop(y)), new_rnn  # (B, T, D*H) -> (B, T, V)

        feats, new_pool = self._pool(y, lengths, new_rnn[0], pool_state)
        logits = self.head(self.drop(torch.cat(feats, dim=1)))  # (B, head_in) -> (B, C)
        return logits, (*new_rnn, *new_pool)

    def _recur(self, x: Tensor, lengths: Tensor | None, rnn_state: State) -> tuple[Tensor, State]:
        """Run the stacked RNN. x: (B, T, E) -> y (B, T, D*H), state (L*D, B, H) each."""
        T = x.shape[1]
        if isinstance(self.rnn, PeepholeLSTM):
            y, (h, c) = self.rnn(x, (rnn_state[0], rnn_state[1]), lengths)
            return y, (h, c)
        hx = (rnn_state[0], rnn_state[1]) if len(rnn_state) == 2 else rnn_state[0]
        if lengths is None:
            y, hn = self.rnn(x, hx)
        else:
            # Packing makes the RNN stop at each row's last real token: exact final state.
            # (enforce_sorted=False: torch sorts the rows and permutes hx / h_n back itself.)
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            y_packed, hn = self.rnn(packed, hx)
            y, _ = pad_packed_sequence(y_packed, batch_first=True, total_length=T)
        return y, (tuple(hn) if isinstance(hn, tuple) else (hn,))

    def _pool(
        self, y: Tensor, lengths: Tensor | None, h_n: Tensor, pool_state: State
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Head features and updated pool accumulators. y: (B, T, D*H); h_n: (L*D, B, H)."""
        cfg = self.cfg
        B, T, _ = y.shape
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.long, device=y.device)
        lengths = lengths.to(y.device)
        real = (torch.arange(T, device=y.device)[None, :] < lengths[:, None])[..., None]  # (B,T,1)
        feats: list[Tensor] = []
        new_pool: list[Tensor] = []
        if cfg.pooling in ("last", "last_max"):
            D = cfg.num_directions
            # top layer's final state, directions side by side: (D, B, H) -> (B, D*H)
            feats.append(h_n[-D:].transpose(0, 1).reshape(B, cfg.feature_size))
        if cfg.pooling in ("max", "last_max"):
            chunk_max = y.masked_fill(~real, float("-inf")).amax(dim=1)  # (B, T, F) -> (B, F)
            running = torch.maximum(pool_state[0][0], chunk_max)  # (B, F)
            feats.append(running)
            new_pool.append(running[None])  # (1, B, F)
        if cfg.pooling == "mean":
            total = pool_state[0][0] + (y * real).sum(dim=1)  # (B, F)
            count = pool_state[1][0] + lengths[:, None].to(y.dtype)  # (B, 1)
            feats.append(total / count)
            new_pool += [total[None], count[None]]
        return feats, new_pool

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
