"""Tokenizers shared by training and serving, usable without torch or the `tokenizers` package.

Both implement the streaming contract the sessions rely on:

    ids_1, pending_1 = tok.encode_stream("", chunk_1)
    ids_2, pending_2 = tok.encode_stream(pending_1, chunk_2)
    ...
    ids_1 + ids_2 + ... + tok.encode(pending_n) == tok.encode(chunk_1 + chunk_2 + ... + chunk_n)

`pending` is text that cannot be tokenized yet because the next chunk may extend it (an unfinished
word); a session stores it beside the recurrent state. Character tokenizers never hold text back.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from collections.abc import Sequence
from typing import Any, Protocol

from service.contract.manifest import CharTokenizerSpec, WordTokenizerSpec


class UnknownCharactersError(ValueError):
    """Text holds characters a char-level model has never seen (and has no unk token)."""

    def __init__(self, chars: Sequence[str]) -> None:
        self.chars = sorted(set(chars))
        shown = "".join(self.chars[:20])
        super().__init__(f"characters not in the model's vocabulary: {shown!r}")


class Tokenizer(Protocol):
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def encode_stream(self, pending: str, text: str) -> tuple[list[int], str]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class CharTokenizer:
    """One id per character. Unseen characters map to `unk_token` or raise, per the manifest."""

    def __init__(self, vocab: Sequence[str], unk_token: str | None = None) -> None:
        self.vocab = list(vocab)
        self.stoi = {ch: i for i, ch in enumerate(self.vocab)}
        self.unk_id = self.stoi[unk_token] if unk_token is not None else None
        self.vocab_size = len(self.vocab)

    @classmethod
    def from_spec(cls, spec: CharTokenizerSpec) -> CharTokenizer:
        return cls(spec.vocab, spec.unk_token)

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """The vocabulary of a training text, in code-point order (deterministic)."""
        return cls(sorted(set(text)))

    def spec(self) -> CharTokenizerSpec:
        unk = self.vocab[self.unk_id] if self.unk_id is not None else None
        return CharTokenizerSpec(vocab=self.vocab, unk_token=unk)

    def encode(self, text: str) -> list[int]:
        stoi = self.stoi
        try:
            return [stoi[ch] for ch in text]
        except KeyError:
            if self.unk_id is None:
                raise UnknownCharactersError([ch for ch in text if ch not in stoi]) from None
            unk = self.unk_id
            return [stoi.get(ch, unk) for ch in text]

    def unknown_chars(self, text: str) -> list[str]:
        return sorted({ch for ch in text if ch not in self.stoi}) if self.unk_id is None else []

    def encode_stream(self, pending: str, text: str) -> tuple[list[int], str]:
        return self.encode(pending + text), ""

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.vocab[i] for i in ids)


# The word pipeline, identical to the HF `tokenizers` one that training builds (see
# `word_tokenizer_json`): Replace("<br />", " ") -> NFKC -> Lowercase, then the `Whitespace`
# pre-tokenizer (\w+|[^\w\s]+), then a WordLevel vocabulary with an unknown token.
BR = "<br />"
_WS = re.compile(r"\s")


@functools.cache
def _pre_token_re() -> re.Pattern[str]:
    """`\\w+|[^\\w\\s]+` with Rust's (HF's) meaning of \\w, which also counts combining marks
    and joiners as word characters; Python's `\\w` does not, so they are added explicitly."""
    extra: list[str] = ["\u200c\u200d"]
    start = None
    for cp in range(sys.maxunicode + 2):
        inside = cp <= sys.maxunicode and unicodedata.category(chr(cp)) in ("Mn", "Mc", "Me")
        if inside and start is None:
            start = cp
        elif not inside and start is not None:
            extra.append(f"{re.escape(chr(start))}-{re.escape(chr(cp - 1))}")
            start = None
    word = "\\w" + "".join(extra)
    return re.compile(f"[{word}]+|[^{word}\\s]+")


def normalize_words(text: str) -> str:
    return unicodedata.normalize("NFKC", text.replace(BR, " ")).lower()


# On ASCII text the extra word characters above (all non-ASCII) cannot occur, so plain `\w`
# gives the same pre-tokens, about 7x faster than the large character class (IMDB reviews,
# ~90 % ASCII: 404 -> 55 us per review; see docs/benchmarks.md).
_ASCII_PRE_TOKEN = re.compile(r"\w+|[^\w\s]+")


def pre_tokenize(text: str) -> list[str]:
    norm = normalize_words(text)
    pattern = _ASCII_PRE_TOKEN if norm.isascii() else _pre_token_re()
    return pattern.findall(norm)


def _safe_cut(text: str) -> int:
    """Length of the longest prefix that tokenizes the same alone as inside `text + anything`.

    A pre-token never spans whitespace, so a cut right after a whitespace character is safe,
    unless that whitespace is the space inside "<br />" (then the replacement would straddle it).
    NFKC cannot compose across it either: whitespace is a starter that combines with nothing.
    """
    for i in range(len(text) - 1, -1, -1):
        if _WS.match(text[i]) and not (text[i] == " " and text[max(0, i - 3) : i] == "<br"):
            return i + 1
    return 0


class WordTokenizer:
    """WordLevel tokenizer with the exact behaviour of the HF pipeline training builds."""

    def __init__(self, vocab: dict[str, int], unk_token: str = "[UNK]", pad_token: str = "[PAD]"):
        self.vocab = dict(vocab)
        self.unk_id = self.vocab[unk_token]
        self.pad_id = self.vocab[pad_token]
        self.itos = {i: w for w, i in self.vocab.items()}
        self.vocab_size = len(self.vocab)

    @classmethod
    def from_spec(cls, spec: WordTokenizerSpec) -> WordTokenizer:
        return cls.from_json(spec.tokenizer_json)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WordTokenizer:
        model = data.get("model") or {}
        if model.get("type") != "WordLevel":
            raise ValueError(f"word tokenizer: model type {model.get('type')!r} is not WordLevel")
        if data.get("normalizer") != WORD_NORMALIZER or data.get("pre_tokenizer") != WORD_PRE:
            raise ValueError("word tokenizer: normalizer/pre-tokenizer differ from rnnserve's")
        return cls(model["vocab"], unk_token=model.get("unk_token", "[UNK]"))

    def encode(self, text: str) -> list[int]:
        get, unk = self.vocab.get, self.unk_id
        return [get(w, unk) for w in pre_tokenize(text)]

    def encode_stream(self, pending: str, text: str) -> tuple[list[int], str]:
        buf = pending + text
        cut = _safe_cut(buf)
        return self.encode(buf[:cut]), buf[cut:]

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.itos.get(i, "[UNK]") for i in ids)


# The exact HF `tokenizers` JSON fragments the pure-Python pipeline implements. Training builds its
# tokenizer with these components; `WordTokenizer.from_json` refuses anything else.
WORD_NORMALIZER: dict[str, Any] = {
    "type": "Sequence",
    "normalizers": [
        {"type": "Replace", "pattern": {"String": BR}, "content": " "},
        {"type": "NFKC"},
        {"type": "Lowercase"},
    ],
}
WORD_PRE: dict[str, Any] = {"type": "Whitespace"}


def tokenizer_from_spec(
    spec: CharTokenizerSpec | WordTokenizerSpec,
) -> CharTokenizer | WordTokenizer:
    if isinstance(spec, CharTokenizerSpec):
        return CharTokenizer.from_spec(spec)
    return WordTokenizer.from_spec(spec)
