"""How much prefill work one pass may do: about `pass_ms` of it, in tokens, from the cost of a
token measured on the model's own large calls (so the budget follows the model and machine:
~1,500 tokens on `char-gru` here, ~12,000 on `sentiment-lstm`), within `max_tokens`; and the
most of one long job a pass runs (`chunk_tokens`, or the budget when that is less)."""

from __future__ import annotations

COST_SAMPLE_TOKENS = 256  # a prefill call this large (padded tokens) measures a token's cost
FIRST_PASS_TOKENS = 2048  # a pass's budget before any such call was measured


class PassBudget:
    """Owned by one model's engine thread (`observe`); read on the loop too (`chunk`, at a
    job's admission: a float read)."""

    def __init__(self, pass_ms: float, max_tokens: int, chunk_tokens: int) -> None:
        self.pass_ms, self.max_tokens, self.chunk_tokens = pass_ms, max_tokens, chunk_tokens
        self.token_s: float | None = None  # measured seconds a padded prefill token (smoothed)

    def tokens(self) -> int:
        """Tokens one prefill pass may run (`max_tokens` when `pass_ms` is 0: no time bound)."""
        if self.pass_ms <= 0:
            return self.max_tokens
        if self.token_s is None:  # nothing measured yet: a guess, until the first large call
            return min(FIRST_PASS_TOKENS, self.max_tokens)
        return max(1, min(int(self.pass_ms / 1000 / self.token_s), self.max_tokens))

    def chunk(self) -> int:
        """The most of one job a pass runs, so one chunk alone keeps to the pass's time."""
        return min(self.chunk_tokens, self.tokens())

    def observe(self, padded_tokens: int, seconds: float) -> None:
        """A prefill call's cost. Only large calls count (a small call's fixed cost would make
        a token look dearer); one slow call (a cold start, a preempted thread) moves the
        estimate at most 3x, and a budget below COST_SAMPLE_TOKENS samples smaller calls, so
        it can grow back."""
        if padded_tokens < min(COST_SAMPLE_TOKENS, self.tokens() // 2):
            return
        cost = seconds / padded_tokens
        old = self.token_s
        self.token_s = cost if old is None else 0.7 * old + 0.3 * min(cost, 3 * old)
