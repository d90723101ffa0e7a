"""Tokenizers built from training text; they return the contract's spec objects.

* Word level (sentiment): an HF `tokenizers` WordLevel model whose normalizer and pre-tokenizer
  serialize to exactly `WORD_NORMALIZER` / `WORD_PRE` from `service.contract.tokenizers`, so the
  server's pure-Python `WordTokenizer` reproduces it token for token. `[PAD]` = 0, `[UNK]` = 1,
  then words by descending training-set frequency, capped at `vocab_size` entries in all.
* Character level (language model): the sorted set of training characters. Policy for characters
  never seen in training: by default the vocabulary has NO unk entry, so the contract's
  `CharTokenizer` raises `UnknownCharactersError` (the server answers 422 naming them) — a
  Shakespeare model has nothing sensible to say about '€'. With `data.char_unk = true` an extra
  entry "\\x00" (never in the text) is appended and unseen characters map to it; the model learns
  nothing for that id, so it is a graceful-degradation switch, not a feature.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from service.contract.manifest import CharTokenizerSpec, WordTokenizerSpec
from service.contract.tokenizers import WORD_NORMALIZER, WORD_PRE, CharTokenizer, WordTokenizer

PAD, UNK = "[PAD]", "[UNK]"
CHAR_UNK = "\x00"


def build_char_tokenizer(text: str, unk: bool = False) -> CharTokenizerSpec:
    vocab = sorted(set(text))
    if unk:
        if CHAR_UNK in vocab:
            raise ValueError("the training text contains NUL, which is reserved for char_unk")
        vocab.append(CHAR_UNK)
    return CharTokenizerSpec(vocab=vocab, unk_token=CHAR_UNK if unk else None)


def _hf_word_tokenizer(vocab_size: int, min_freq: int) -> tuple[Any, Any]:
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers  # noqa: F401
    from tokenizers.models import WordLevel
    from tokenizers.trainers import WordLevelTrainer

    tok = Tokenizer(WordLevel(unk_token=UNK))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Replace("<br />", " "), normalizers.NFKC(), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = WordLevelTrainer(
        vocab_size=vocab_size,
        min_frequency=min_freq,
        special_tokens=[PAD, UNK],
        show_progress=False,
    )
    return tok, trainer


def build_word_tokenizer(
    texts: Iterable[str], vocab_size: int = 20000, min_freq: int = 2
) -> WordTokenizerSpec:
    """Train a WordLevel vocabulary on `texts`; the result is the contract's `WordTokenizerSpec`."""
    tok, trainer = _hf_word_tokenizer(vocab_size, min_freq)
    tok.train_from_iterator(texts, trainer=trainer)
    data = json.loads(tok.to_str())
    # The contract is the serialized JSON: check it here, where a tokenizers upgrade would show.
    if data["normalizer"] != WORD_NORMALIZER or data["pre_tokenizer"] != WORD_PRE:
        raise RuntimeError(
            "the HF tokenizer serializes differently from service.contract's WORD_NORMALIZER / "
            f"WORD_PRE: {data['normalizer']} / {data['pre_tokenizer']}"
        )
    vocab = data["model"]["vocab"]
    assert vocab[PAD] == 0 and vocab[UNK] == 1, "special tokens must be ids 0 and 1"
    return WordTokenizerSpec(tokenizer_json=data)


def hf_from_spec(spec: WordTokenizerSpec) -> Any:
    """The Rust tokenizer for fast batch encoding in training (same ids as the contract's)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(json.dumps(spec.tokenizer_json))


def encode_words(spec: WordTokenizerSpec, texts: list[str]) -> list[list[int]]:
    """Ids for many texts at once (HF's parallel `encode_batch`)."""
    tok = hf_from_spec(spec)
    return [enc.ids for enc in tok.encode_batch(texts, add_special_tokens=False)]


def pad_id(spec: CharTokenizerSpec | WordTokenizerSpec) -> int:
    if isinstance(spec, WordTokenizerSpec):
        return int(spec.tokenizer_json["model"]["vocab"][PAD])
    return 0  # LM batches are never padded; the id is only a placeholder for the config


def vocab_size(spec: CharTokenizerSpec | WordTokenizerSpec) -> int:
    if isinstance(spec, WordTokenizerSpec):
        return WordTokenizer.from_spec(spec).vocab_size
    return CharTokenizer.from_spec(spec).vocab_size
