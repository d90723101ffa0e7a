"""`rnnserve sample RUN_DIR`: generate text from a character model (or classify a prompt).

Sampling: logits / temperature -> keep the top-k -> softmax -> draw. Temperature 0 is greedy
(argmax). The prompt is fed through the model first and the state carried, exactly as a serving
session does.
"""

from __future__ import annotations

from pathlib import Path

import torch

from service.contract.tokenizers import CharTokenizer, WordTokenizer
from training import checkpoint as ck
from training.runtime import pick_device


def next_token(
    logits: torch.Tensor, temperature: float, top_k: int | None, gen: torch.Generator
) -> int:
    """logits: (V,) -> one sampled id."""
    if temperature <= 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))  # drop all but the k most likely
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=gen))


@torch.no_grad()
def sample(
    run_dir: Path,
    prompt: str = "\n",
    length: int = 300,
    temperature: float = 0.8,
    top_k: int | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> str:
    """Prompt + `length` sampled characters."""
    dev = pick_device(device)
    ckpt = ck.load(run_dir, "cpu")
    if ckpt["model_config"]["task"] != "next_token":
        raise ValueError(
            "sample needs a next_token (language) model; use `classify` for a classifier"
        )
    model = ck.rebuild_model(ckpt, dev)
    tok = CharTokenizer.from_spec(ck.tokenizer_spec(ckpt))  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(seed)
    ids = tok.encode(prompt or "\n")
    logits, state = model(torch.tensor([ids], device=dev), None, None)  # (1, T, V)
    out: list[int] = []
    for _ in range(length):
        nxt = next_token(logits[0, -1].cpu(), temperature, top_k, gen)
        out.append(nxt)
        logits, state = model(torch.tensor([[nxt]], device=dev), None, state)  # one step
    return prompt + tok.decode(out)


@torch.no_grad()
def classify(run_dir: Path, text: str, device: str = "cpu") -> dict[str, float]:
    """Label probabilities of `text` under a classifier run."""
    dev = pick_device(device)
    ckpt = ck.load(run_dir, "cpu")
    if ckpt["model_config"]["task"] != "classify":
        raise ValueError("classify needs a classification model")
    from training.loop_classify import truncate

    model = ck.rebuild_model(ckpt, dev)
    tok = WordTokenizer.from_spec(ck.tokenizer_spec(ckpt))  # type: ignore[arg-type]
    dc = ckpt["config"]["data"]
    ids = truncate(tok.encode(text), dc["max_len"], dc["keep"], tok.unk_id)
    logits, _ = model(torch.tensor([ids], device=dev), torch.tensor([len(ids)], device=dev))
    probs = torch.softmax(logits[0].float(), -1).tolist()
    return dict(zip(ckpt["labels"], probs, strict=True))
