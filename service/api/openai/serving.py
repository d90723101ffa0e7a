"""Completions over the engine: every choice is one engine generation (they all join the model's
continuously batched decode loop), or one session generation with the `session_id` extension.

THE mapping of generation outcomes to OpenAI stream chunks:

    data: {"choices": [{"index", "text", "logprobs", "finish_reason": null}], ...}  per token
    data: {"choices": [{"index", "text": "", "finish_reason": "stop" | "length"}]}  per choice
    data: {"choices": [], "usage": {...}}                         with include_usage
    data: {"error": {"message", "type", "param", "code"}}         instead, on failure
    data: [DONE]                                                  always last
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from service.api.deps import Services
from service.api.openai.protocol import ValidCompletion, error_body
from service.api.pacing import Pacer
from service.api.surface_route import client_status
from service.errors import InvalidInput, ServiceError
from service.protocol.catalog import ModelView
from service.protocol.client import GenerationStream, StreamHold, TokenEvent
from service.protocol.messages import Finished, GenerationResult
from service.protocol.ops import Generate, GetSession, SessionGenerate


@dataclass
class Choice:
    """One running completion choice and what it has produced so far."""

    index: int
    prompt: str
    gen: GenerationStream
    first: bool  # the first choice of its prompt (its prompt tokens count once in usage)
    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[str, float]] = field(default_factory=list)
    streamed: int = 0  # characters of text already sent in stream chunks
    keep: bool = True  # keep each token's logprobs for the final body (not when streaming)
    offset: int = 0  # characters of the tokens seen so far
    result: GenerationResult | None = None

    def finish(self, result: GenerationResult) -> str:
        """Take the final result; return text not streamed yet (all of it for a replay of an
        `Idempotency-Key`, whose tokens were never streamed)."""
        self.result = result
        if not self.tokens:
            for item in result.logprobs or ():
                self.tokens.append(item.token)
                self.token_logprobs.append(item.logprob)
                self.top_logprobs.append({t.token: t.logprob for t in item.top})
        rest = result.text[self.streamed :]
        self.streamed += len(rest)
        return rest

    def add(self, m: ModelView, ev: TokenEvent) -> dict[str, Any] | None:
        """Record a token; return its logprobs fragment (for a stream chunk) when asked for."""
        if ev.logprob is None:
            return None
        tok = m.token_text(ev.token_id)
        lp = ev.logprob.logprob
        top = {t.token: t.logprob for t in ev.logprob.top}
        offset = self.offset
        self.offset += len(tok)
        if self.keep:
            self.tokens.append(tok)
            self.token_logprobs.append(lp)
            self.top_logprobs.append(top)
        return {
            "tokens": [tok],
            "token_logprobs": [lp],
            "top_logprobs": [top],
            "text_offset": [offset],
        }

    def logprobs(self, echo_len: int) -> dict[str, Any]:
        """Logprobs of the tokens that make up the returned text (a stop string cuts them)."""
        assert self.result is not None
        n_text = len(self.result.text)
        offsets, keep, at = [], 0, 0
        for t in self.tokens:
            if at >= n_text and self.result.finish_reason == "stop":
                break
            offsets.append(echo_len + at)
            at += len(t)
            keep += 1
        return {
            "tokens": self.tokens[:keep],
            "token_logprobs": self.token_logprobs[:keep],
            "top_logprobs": self.top_logprobs[:keep],
            "text_offset": offsets,
        }


@dataclass
class Running:
    """A running completion request: its choices, ids and the model."""

    m: ModelView
    req: ValidCompletion
    choices: list[Choice]
    id: str = field(default_factory=lambda: "cmpl-" + secrets.token_hex(12))
    created: int = field(default_factory=lambda: int(time.time()))

    def head(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.m.name,
            "system_fingerprint": "fp_" + self.m.sha256[:12],
        }

    def usage(self) -> dict[str, int]:
        prompt = sum(c.result.usage.prompt_tokens for c in self.choices if c.first and c.result)
        done = sum(c.result.usage.completion_tokens for c in self.choices if c.result)
        return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}

    def session_fields(self) -> dict[str, Any]:
        if self.req.session_id is None or not self.choices or self.choices[0].result is None:
            return {}
        return {
            "session_id": self.req.session_id,
            "session_version": self.choices[0].result.version,
        }

    async def aclose(self) -> None:
        for c in self.choices:
            await c.gen.aclose()


async def start(
    s: Services,
    req: ValidCompletion,
    owner: str | None,
    idempotency_key: str | None,
    hold: StreamHold | None,
) -> Running:
    """Open every choice's generation (all or none)."""
    m = s.client.catalog.get(req.model)
    m.require_lm()
    done = Running(m, req, [])
    try:
        if req.session_id is not None:
            info = await s.client.call(GetSession(req.session_id, owner))
            if info.model != m.name:
                raise InvalidInput(
                    f"session {req.session_id!r} belongs to model {info.model!r}, not {m.name!r}",
                    field="model",
                )
            op = SessionGenerate(
                req.session_id, req.choices[0][0], req.expected_version, idempotency_key, owner
            )
            session_gen = await s.client.open(op, hold)
            done.choices.append(Choice(0, req.prompts[0], session_gen, True))
            return done
        # opened concurrently, so every choice's prompt goes into the same prefill batch
        slots = [
            (i, j, prompt, p)
            for i, (prompt, row) in enumerate(zip(req.prompts, req.choices, strict=True))
            for j, p in enumerate(row)
        ]
        if hold is not None:  # every choice is a decode row: the stream caps count them all
            hold.widen(len(slots))
        opened = await asyncio.gather(
            *(s.client.open(Generate(req.model, p), hold) for *_, p in slots),  # (name@v too)
            return_exceptions=True,
        )
        for (i, j, prompt, _), gen in zip(slots, opened, strict=True):
            if not isinstance(gen, BaseException):
                done.choices.append(Choice(i * len(req.choices[i]) + j, prompt, gen, j == 0))
        failed = next((g for g in opened if isinstance(g, BaseException)), None)
        if failed is not None:
            raise failed
    except BaseException:
        await done.aclose()
        raise
    return done


async def collect(c: Running) -> dict[str, Any]:
    """Run every choice to the end; the response body."""

    async def one(ch: Choice) -> None:
        async for ev in ch.gen.events():
            if isinstance(ev, Finished):
                ch.finish(ev.result)
            else:
                ch.add(c.m, ev)

    try:
        await asyncio.gather(*(one(ch) for ch in c.choices))
    finally:
        await c.aclose()
    choices = []
    for ch in c.choices:
        assert ch.result is not None
        echo = ch.prompt if c.req.echo else ""
        choices.append(
            {
                "index": ch.index,
                "text": echo + ch.result.text,
                "logprobs": ch.logprobs(len(echo)) if c.req.logprobs else None,
                "finish_reason": ch.result.finish_reason,
            }
        )
    return {**c.head(), "choices": choices, "usage": c.usage(), **c.session_fields()}


def _frame(data: dict[str, Any] | str) -> str:
    body = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {body}\n\n"


def _error_frame(e: BaseException) -> str:
    if isinstance(e, ServiceError):
        return _frame(error_body(e.message, client_status(e), e.field, e.code))
    return _frame(error_body("internal error", 500, None, "internal_error"))


async def sse(c: Running, pacer: Pacer) -> AsyncGenerator[str, None]:
    """Chunks of every choice as they come (choices interleave), then usage, then [DONE];
    under load `pacer` spaces the chunks (service/api/pacing.py)."""
    queue: asyncio.Queue[tuple[Choice, TokenEvent | Finished | BaseException]] = asyncio.Queue()

    async def pump(ch: Choice) -> None:
        ch.keep = False  # every chunk carries its own token's logprobs
        try:
            async for ev in ch.gen.events(keep_logprobs=False):
                await queue.put((ch, ev))
        except Exception as e:
            await queue.put((ch, e))

    with pacer.stream():
        tasks = [asyncio.create_task(pump(ch)) for ch in c.choices]
        try:
            for ch in c.choices:
                if c.req.echo and ch.prompt:
                    yield _frame({**c.head(), "choices": [_chunk(ch.index, ch.prompt)]})
            remaining = len(c.choices)
            failed = False
            while remaining and not failed:
                # everything ready goes out in one chunk: one send for several tokens under load
                ready = [await queue.get()]
                while not queue.empty():
                    ready.append(queue.get_nowait())
                frames: list[str] = []
                for ch, ev in ready:
                    if isinstance(ev, BaseException):
                        frames.append(_error_frame(ev))
                        failed = True
                        break
                    if isinstance(ev, Finished):
                        rest = ch.finish(ev.result)
                        remaining -= 1
                        last = _chunk(ch.index, rest, finish_reason=ev.result.finish_reason)
                        frames.append(_frame({**c.head(), "choices": [last], **c.session_fields()}))
                        continue
                    lp = ch.add(c.m, ev)
                    ch.streamed += len(ev.text)
                    if ev.text or lp is not None:
                        frames.append(
                            _frame({**c.head(), "choices": [_chunk(ch.index, ev.text, lp)]})
                        )
                if frames:
                    yield "".join(frames)
                    if remaining and not failed:
                        await pacer.after_write()
            if not failed and c.req.include_usage:
                yield _frame({**c.head(), "choices": [], "usage": c.usage()})
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            await c.aclose()
        yield _frame("[DONE]")


def _chunk(
    index: int, text: str, logprobs: dict[str, Any] | None = None, finish_reason: str | None = None
) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
