"""A generation's decode, traced as ONE span (not one per step: a stream of 4,096 tokens would
make 4,096): the steps it ran and the mean batch it ran in, from the scheduler's running counts
(`StepCount`) read as the stream joins and as it ends. The end is seen on the event loop a
little after the engine thread's last step for it, so a busy batch's mean may include a step
or two run after it left."""

from __future__ import annotations

from service import tracing


class StepCount:
    """A scheduler's decode steps and the rows they ran, so far (written by its engine thread
    only; read anywhere, a step late at worst)."""

    __slots__ = ("rows", "steps")

    def __init__(self) -> None:
        self.steps = 0
        self.rows = 0


class DecodeTrace:
    """The `decode` span of one stream, from its join to its end (`end`, on the event loop)."""

    __slots__ = ("_counts", "_rows0", "_steps0", "span")

    def __init__(self, span: tracing.Span, counts: StepCount) -> None:
        self.span, self._counts = span, counts
        self._steps0, self._rows0 = counts.steps, counts.rows

    def end(
        self, outcome: str, tokens: int | None = None, error: BaseException | None = None
    ) -> None:
        c = self._counts
        steps, rows = c.steps - self._steps0, c.rows - self._rows0
        s = self.span
        s.set_attribute("rnnserve.outcome", outcome)
        if tokens is not None:
            s.set_attribute("rnnserve.tokens", tokens)
        s.set_attribute("rnnserve.decode_steps", steps)
        if steps:
            s.set_attribute("rnnserve.batch_size_mean", round(rows / steps, 2))
        tracing.end_span(s, error)
