"""The ASCII fast path of the word pre-tokenizer gives exactly the general pattern's pre-tokens."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from service.contract.tokenizers import _pre_token_re, normalize_words, pre_tokenize

ASCII = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), max_size=60)


def _general(text: str) -> list[str]:
    return list(_pre_token_re().findall(normalize_words(text)))


@settings(max_examples=500, deadline=None)
@given(ASCII)
def test_ascii_fast_path_equals_general_pattern(text: str) -> None:
    assert pre_tokenize(text) == _general(text)


def test_every_ascii_character_between_words() -> None:
    for cp in range(128):
        text = f"ab{chr(cp)}cd {chr(cp)}{chr(cp)} e_f{chr(cp)}"
        assert pre_tokenize(text) == _general(text), repr(chr(cp))


def test_non_ascii_text_takes_the_general_pattern() -> None:
    # a combining mark is a word character for HF's \\w but not for Python's
    assert pre_tokenize("cafe\u0301 ok!") == _general("cafe\u0301 ok!")
    assert pre_tokenize("Good<br />MOVIE!! \x1c x") == ["good", "movie", "!!", "x"]
