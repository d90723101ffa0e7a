"""A running generation as its caller sees it: the engine's stream, its events in batches, the
result at its end, and a session's commit around that end (`finalize`, `before_commit`).

`Engine.generate` / `generate_many` / `start_generation` make one; the session service gives it
the commit hooks; the host (one per worker call) and the API surfaces consume it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from service.engine.stream import DoneEvent, ErrorEvent, Stream
from service.protocol.events import EventsFromBatches, TokenEvent
from service.protocol.messages import Finished, GenerationResult, TokenLogprob, Usage

Finalizer = Callable[[DoneEvent, GenerationResult], Awaitable[GenerationResult]]
BeforeCommit = Callable[[], Awaitable[str | None]]


@dataclass(eq=False)
class Generation(EventsFromBatches):
    """A running generation. Iterate `events()`; `aclose()` always (it cancels and releases)."""

    stream: Stream
    model: str
    session_id: str | None = None
    finalize: Finalizer | None = None
    release: Callable[[], Awaitable[None]] | None = None
    replay: GenerationResult | None = None  # an idempotent replay: no stream ran
    # awaited after the last token was taken and before `finalize` commits (the engine process:
    # until the worker's client has been handed every token too); it answers the text the
    # consumer was handed when the consumer decoded the tokens itself (a routed stream)
    before_commit: BeforeCommit | None = None
    key: str | None = None  # the version generating (name@version), whose vocab decodes it
    _closed: bool = field(default=False, init=False)
    _pieces: list[str] = field(default_factory=list, init=False)  # the result's text

    def forward_tokens(self, send: Callable[[TokenEvent], None]) -> None:
        """Hand every token to `send` as the engine emits it, and leave only the end (the
        result, after `before_commit` and `finalize`, or the error) to `batches()`.

        For a consumer that only forwards (the engine process's host); the result then leaves
        out the per-token logprobs, as with `batches(keep_logprobs=False)`."""
        pieces = self._pieces

        def sink(ev: TokenEvent) -> None:
            pieces.append(ev.text)
            send(ev)

        self.stream.forward_tokens(sink)

    @property
    def routed(self) -> bool:
        """Its tokens go by its `Route` as arrays: its consumer decodes them, and only the end
        comes through `batches()` (with the text left for the consumer to fill in)."""
        return self.stream.route is not None

    async def batches(
        self, keep_logprobs: bool = True
    ) -> AsyncIterator[list[TokenEvent | Finished]]:
        """The events available at each wake-up (see `Stream.iter_batches`); the last batch
        ends with `Finished`. A failed stream raises its error after its last tokens.

        `keep_logprobs=False` (streams: each token event carried its own) leaves them out of
        the final result: kept, 4096 tokens with 20 alternatives are ~12 MB a generation, which
        a client that stops reading made the server hold for every stream it opened."""
        if self.replay is not None:
            yield [Finished(self.replay)]
            return
        pieces = self._pieces
        keep_logprobs = keep_logprobs and not self.stream.forwarded
        logprobs: list[TokenLogprob] | None = [] if keep_logprobs else None
        try:
            async for evs in self.stream.iter_batches():
                out: list[TokenEvent | Finished] = []
                for ev in evs:
                    if isinstance(ev, TokenEvent):
                        pieces.append(ev.text)
                        if ev.logprob is not None and logprobs is not None:
                            lp = ev.logprob
                            logprobs.append(TokenLogprob(ev.text, lp.logprob, lp.top))
                        out.append(ev)
                    elif isinstance(ev, ErrorEvent):
                        if out:
                            yield out
                        raise ev.error
                    else:
                        if self.finalize is not None:
                            # a session commits only once its consumer has taken every token:
                            # the last ones go out first (a client gone before that commits
                            # nothing), and over the wire the host waits for the worker's word
                            if out:
                                yield out
                                out = []
                            if self.before_commit is not None:
                                text = await self.before_commit()
                                if text is not None:  # a routed stream's, decoded by its consumer
                                    pieces[:] = [text]
                        out.append(Finished(await self._result(ev, pieces, logprobs)))
                yield out
        finally:
            await self.aclose()

    def result_of(self, ev: DoneEvent) -> GenerationResult:
        """The result at `ev`, for a generation that commits nothing (no `finalize`, nothing
        awaited before it) whose tokens went to `forward_tokens` or a route: its text is what
        was forwarded (a routed stream's consumer fills in its own), without logprobs."""
        assert self.finalize is None and self.before_commit is None
        return self._plain_result(ev, self._pieces, None)

    async def _result(
        self, ev: DoneEvent, pieces: list[str], logprobs: list[TokenLogprob] | None
    ) -> GenerationResult:
        result = self._plain_result(ev, pieces, logprobs)
        if self.finalize is not None:
            result = await self.finalize(ev, result)
        return result

    def _plain_result(
        self, ev: DoneEvent, pieces: list[str], logprobs: list[TokenLogprob] | None
    ) -> GenerationResult:
        prompt = self.stream.prompt_tokens
        wanted = self.stream.params.logprobs is not None and logprobs is not None
        return GenerationResult(
            model=self.model,
            text="".join(pieces),
            finish_reason=ev.finish_reason,
            usage=Usage(prompt, ev.completion_tokens, prompt + ev.completion_tokens),
            seed=self.stream.params.seed,
            stop=ev.stop,
            logprobs=tuple(logprobs) if wanted and logprobs is not None else None,
            session_id=self.session_id,
        )

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.stream.cancel()
        if self.release is not None:
            await self.release()
