"""Character language model: truncated BPTT over parallel streams (char-rnn style).

The training text (N chars) is cut into B contiguous streams of S = N // B chars, laid out as
rows of a (B, S) matrix. Batch i is the window x = X[:, iT:(i+1)T] with targets y = the next
character of each position. The final state of batch i is the initial state of batch i+1
(detached: gradients flow back at most T steps), so the model sees context far beyond T while
the backward pass stays O(T). Each epoch starts the streams at a seeded random offset in [0, T),
so window boundaries move between epochs. The state is reset at the start of every epoch.

Validation runs the same way over the whole validation text with carried state; the loss is
the mean cross-entropy in nats/char over every validation character but the first of each stream.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from service.contract.manifest import CharTokenizerSpec
from service.contract.tokenizers import CharTokenizer
from training.config import ExperimentConfig
from training.data.text import TextData
from training.metrics import lm_units
from training.tokenization import build_char_tokenizer


@dataclass
class Batch:
    x: Tensor  # (B, T) long
    y: Tensor  # (B, T) long, y[:, t] = x[:, t + 1] in the stream

    def to(self, device: torch.device) -> Batch:
        return Batch(self.x.to(device), self.y.to(device))


def streams(data: Tensor, n_streams: int, offset: int = 0) -> tuple[Tensor, Tensor]:
    """(N,) -> inputs and targets, each (B, S): row b is chars [b*S, (b+1)*S) after `offset`."""
    d = data[offset:]
    S = (len(d) - 1) // n_streams
    x = d[: n_streams * S].view(n_streams, S)  # (B, S)
    y = d[1 : n_streams * S + 1].view(n_streams, S)  # (B, S): the next character of each
    return x, y


def detach(state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return tuple(s.detach() for s in state)


class LMTask:
    kind = "next_token"
    labels: list[str] | None = None

    def __init__(
        self, cfg: ExperimentConfig, data: TextData, tokenizer: CharTokenizerSpec | None = None
    ):
        self.cfg = cfg
        self.dataset = data.source
        self.tokenizer = tokenizer or build_char_tokenizer(data.train, cfg.data.char_unk)
        tok = CharTokenizer.from_spec(self.tokenizer)
        self.vocab_size = tok.vocab_size
        # the validation text may hold characters training never saw: map them to unk if there
        # is one, else fail here with the characters named (never at step 10,000)
        self.train = torch.tensor(tok.encode(data.train), dtype=torch.long)  # (N,)
        self.val = torch.tensor(tok.encode(data.val), dtype=torch.long)  # (M,)
        B, T = cfg.train.batch_size, cfg.train.seq_len
        if len(self.train) < B * T + T + 1:
            raise ValueError(
                f"training text too short ({len(self.train)} chars) for batch_size {B} x seq_len {T}"
            )
        # worst case offset T-1 leaves (N - T) // B chars per stream: same step count every epoch
        self._steps = ((len(self.train) - T) // B) // T
        self.state: tuple[Tensor, ...] | None = None

    def model_fields(self) -> dict[str, Any]:
        return {"task": "next_token", "vocab_size": self.vocab_size, "pad_id": 0, "pooling": "last"}

    def steps_per_epoch(self) -> int:
        return self._steps

    def batches(self, epoch: int, start: int) -> Iterator[Batch]:
        T = self.cfg.train.seq_len
        offset = int(np.random.default_rng([self.cfg.seed, epoch]).integers(0, T))
        X, Y = streams(self.train, self.cfg.train.batch_size, offset)
        for i in range(start, self._steps):
            yield Batch(X[:, i * T : (i + 1) * T], Y[:, i * T : (i + 1) * T])

    def reset(self) -> None:
        self.state = None

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, int]:
        logits, state = model(batch.x, None, self.state)  # (B, T) -> (B, T, V)
        self.state = detach(state)  # truncated BPTT: carry the value, cut the graph
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch.y.flatten())  # mean nats/char
        return loss, batch.x.numel()

    def state_dict(self) -> dict[str, Any]:
        return {"carried": None if self.state is None else [s.cpu() for s in self.state]}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | None = None) -> None:
        carried = state.get("carried")
        self.state = None if carried is None else tuple(s.to(device or "cpu") for s in carried)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        out = evaluate_stream(
            model, self.val, self.cfg.train.eval_batch_size, self.cfg.train.seq_len, device
        )
        return {f"val_{k}": v for k, v in out.items()}


@torch.no_grad()
def evaluate_stream(
    model: nn.Module, data: Tensor, n_streams: int, seq_len: int, device: torch.device
) -> dict[str, float]:
    """Mean nats/char (and bits/char, perplexity) over `data` with carried state."""
    was_training = model.training
    model.eval()
    n_streams = max(1, min(n_streams, (len(data) - 1) // max(1, seq_len)))
    X, Y = streams(data, n_streams)
    state = None
    total, count = 0.0, 0
    for s in range(0, X.shape[1], seq_len):
        x, y = X[:, s : s + seq_len].to(device), Y[:, s : s + seq_len].to(device)
        logits, state = model(x, None, state)  # (B, t, V)
        total += float(F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum"))
        count += y.numel()
    model.train(was_training)
    return lm_units(total / max(1, count)) if count else lm_units(math.nan)
