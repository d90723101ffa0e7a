from __future__ import annotations

import gzip
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.contract.tokenizers import (
    WORD_NORMALIZER,
    WORD_PRE,
    CharTokenizer,
    UnknownCharactersError,
    WordTokenizer,
    pre_tokenize,
)
from tests.conftest import ROOT

SHARED = ROOT.parent / "shared" / "datasets"
VOCAB = {"[PAD]": 0, "[UNK]": 1, "good": 2, "movie": 3, "!": 4, "not": 5, "bad": 6, "'": 7, "s": 8}


def _word_json() -> dict[str, object]:
    return {
        "normalizer": WORD_NORMALIZER,
        "pre_tokenizer": WORD_PRE,
        "model": {"type": "WordLevel", "vocab": VOCAB, "unk_token": "[UNK]"},
    }


def test_char_roundtrip_and_unknown_policy() -> None:
    tok = CharTokenizer.from_text("hello world")
    assert tok.decode(tok.encode("hello")) == "hello"
    with pytest.raises(UnknownCharactersError) as e:
        tok.encode("hez")
    assert e.value.chars == ["z"]
    with_unk = CharTokenizer(["?", "a", "b"], unk_token="?")
    assert with_unk.encode("abz") == [1, 2, 0]


def test_word_pipeline_normalises_like_imdb_expects() -> None:
    assert pre_tokenize("Good<br />MOVIE!!") == ["good", "movie", "!!"]
    assert pre_tokenize("it's") == ["it", "'", "s"]
    tok = WordTokenizer.from_json(_word_json())
    assert tok.encode("Good movie, not bad") == [2, 3, 1, 5, 6]


def test_word_tokenizer_refuses_a_foreign_pipeline() -> None:
    data = _word_json()
    data["pre_tokenizer"] = {"type": "BertPreTokenizer"}
    with pytest.raises(ValueError, match="pre-tokenizer"):
        WordTokenizer.from_json(data)


# Pieces chosen to hit the edge cases: the "<br />" replacement (whose space is not a safe cut),
# combining marks (NFKC composes across them), final sigma, punctuation runs and other whitespace.
_pieces = st.sampled_from(
    [
        "a",
        "b",
        " ",
        "!",
        "'",
        "<",
        "br",
        "/>",
        "<br />",
        "\u0301",
        "é",
        "Σ",
        "σ",
        "\n",
        "\t",
        ".",
        ",",
    ]
)
_text = st.lists(_pieces, max_size=25).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=_text, cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=6))
def test_word_stream_chunked_equals_whole(text: str, cuts: list[int]) -> None:
    """Any split of a text, fed with the carried pending word, tokenizes like the whole text."""
    tok = WordTokenizer.from_json(_word_json())
    bounds = sorted({min(c, len(text)) for c in cuts})
    chunks = [text[a:b] for a, b in zip([0, *bounds], [*bounds, len(text)], strict=True)]
    ids: list[int] = []
    pending = ""
    for chunk in chunks:
        new, pending = tok.encode_stream(pending, chunk)
        ids += new
    ids += tok.encode(pending)
    assert ids == tok.encode(text)


def test_char_stream_never_holds_text_back() -> None:
    tok = CharTokenizer.from_text("abc ")
    assert tok.encode_stream("", "ab c") == (tok.encode("ab c"), "")


def test_matches_hf_tokenizers_on_imdb() -> None:
    """The pure-Python pipeline gives the ids HF `tokenizers` gives (training builds with HF)."""
    hf = pytest.importorskip("tokenizers")
    path = SHARED / "imdb" / "train.jsonl.gz"
    if not path.exists():
        pytest.skip("shared datasets not present")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line, _ in zip(f, range(1500), strict=False)]
    model = hf.Tokenizer(hf.models.WordLevel(unk_token="[UNK]"))
    model.normalizer = hf.normalizers.Sequence(
        [
            hf.normalizers.Replace("<br />", " "),
            hf.normalizers.NFKC(),
            hf.normalizers.Lowercase(),
        ]
    )
    model.pre_tokenizer = hf.pre_tokenizers.Whitespace()
    trainer = hf.trainers.WordLevelTrainer(vocab_size=3000, special_tokens=["[PAD]", "[UNK]"])
    model.train_from_iterator(texts[:1000], trainer)
    ours = WordTokenizer.from_json(json.loads(model.to_str()))
    for text in texts:
        assert ours.encode(text) == model.encode(text).ids
