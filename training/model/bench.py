"""Training / inference throughput of each cell on CPU: `python -m training.model.bench`.

Times forward+backward of the recurrent layer alone (batch-first input, tokens/s = B*T / time),
best of a few repetitions, so the peephole LSTM's Python-loop recurrence can be compared with
torch's fused nn.LSTM at the same size.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from training.model.peephole import PeepholeLSTM


def _layer(cell: str, E: int, H: int) -> nn.Module:
    if cell == "peephole_lstm":
        return PeepholeLSTM(E, H)
    cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell]
    return cls(E, H, batch_first=True)


def tokens_per_second(
    cell: str, B: int, T: int, E: int, H: int, train: bool, lengths: bool = False, reps: int = 5
) -> float:
    torch.manual_seed(0)
    mod = _layer(cell, E, H)
    x = torch.randn(B, T, E)
    h = torch.zeros(1, B, H)
    state = (h, h.clone()) if cell in ("lstm", "peephole_lstm") else h
    lens = torch.randint(1, T + 1, (B,)) if lengths else None
    best = float("inf")
    for _ in range(reps + 1):  # the first run warms up allocators and kernels
        start = time.perf_counter()
        with torch.set_grad_enabled(train):
            if isinstance(mod, PeepholeLSTM):
                y, _ = mod(x, state, lens)
            elif lens is not None:
                packed = nn.utils.rnn.pack_padded_sequence(
                    x, lens, batch_first=True, enforce_sorted=False
                )
                y, _ = mod(packed, state)
                y = nn.utils.rnn.pad_packed_sequence(y, batch_first=True, total_length=T)[0]
            else:
                y, _ = mod(x, state)
            if train:
                y.sum().backward()
        best = min(best, time.perf_counter() - start)
    return B * T / best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--embed", type=int, default=64)
    ap.add_argument("--hidden", type=int, nargs="+", default=[128, 256, 512])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), B={args.batch} T={args.seq} E={args.embed}"
    )
    print(
        f"{'H':>5} {'mode':<14} {'lstm':>10} {'gru':>10} {'rnn':>10} {'peephole':>10} {'peep/lstm':>9}"
    )
    for H in args.hidden:
        for train, lengths in ((True, False), (True, True), (False, False)):
            mode = ("train" if train else "infer") + (" +lengths" if lengths else "")
            r = {
                c: tokens_per_second(c, args.batch, args.seq, args.embed, H, train, lengths)
                for c in ("lstm", "gru", "rnn", "peephole_lstm")
            }
            print(
                f"{H:>5} {mode:<14} "
                + " ".join(f"{r[c]:>10,.0f}" for c in r)
                + f" {r['peephole_lstm'] / r['lstm']:>8.2f}x"
            )


if __name__ == "__main__":
    main()
