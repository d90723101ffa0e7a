from __future__ import annotations

import pytest

from service.contract.tokenizers import (
    WORD_NORMALIZER,
    WORD_PRE,
    CharTokenizer,
    UnknownCharactersError,
    WordTokenizer,
)
from training.tokenization import build_char_tokenizer, build_word_tokenizer, encode_words

pytest.importorskip("tokenizers")

TEXTS = [
    "A wonderful film.<br /><br />Loved every minute!",
    "Terrible. A waste of time... wasn't it?",
    "Café crème, naïve ﬁlm — ２０２４ FULLWIDTH",
    "the the the film film",
]


def test_word_tokenizer_matches_the_contract() -> None:
    spec = build_word_tokenizer(TEXTS, vocab_size=1000, min_freq=1)
    data = spec.tokenizer_json
    assert data["normalizer"] == WORD_NORMALIZER and data["pre_tokenizer"] == WORD_PRE
    vocab = data["model"]["vocab"]
    assert vocab["[PAD]"] == 0 and vocab["[UNK]"] == 1 and "<br" not in vocab and "br" not in vocab
    py = WordTokenizer.from_spec(spec)
    probe = [*TEXTS, "unseen words here!", "ﬁlm<br />FILM", ""]
    assert encode_words(spec, probe) == [py.encode(t) for t in probe]


def test_vocab_cap_and_frequency_order() -> None:
    spec = build_word_tokenizer(TEXTS, vocab_size=5, min_freq=1)
    vocab = spec.tokenizer_json["model"]["vocab"]
    assert len(vocab) == 5
    assert vocab["film"] == 2 and vocab["the"] == 3  # most frequent first (ﬁ -> fi by NFKC)
    assert build_word_tokenizer(TEXTS, 5, 1) == spec  # deterministic
    assert WordTokenizer.from_spec(spec).encode("zebra") == [1]


def test_char_vocab_and_unseen_policy() -> None:
    spec = build_char_tokenizer("hello world")
    assert spec.vocab == sorted(set("hello world")) and spec.unk_token is None
    tok = CharTokenizer.from_spec(spec)
    assert tok.decode(tok.encode("hello")) == "hello"
    with pytest.raises(UnknownCharactersError, match="z"):
        tok.encode("fizz")
    with_unk = CharTokenizer.from_spec(build_char_tokenizer("hello world", unk=True))
    assert with_unk.encode("hz") == [with_unk.stoi["h"], with_unk.vocab_size - 1]
