"""Write pacing (service/api/pacing.py): the gap a stream waits after a write, the streams a
process counts as open, and what a paced stream sends (the same bytes, in fewer writes)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from service.api.pacing import MIN_GAP_S, Pacer
from tests.hardening.asgi import HeldClient
from tests.service.conftest import (
    LM,
    ClientFactory,
    app_of,
    gate_decode_steps,
    no_streams_left,
)


def test_the_gap_grows_with_the_open_streams() -> None:
    p = Pacer(writes_per_s=1000)
    assert p.gap_s() == 0.0
    with p.stream(), p.stream():
        assert p.open_streams == 2
        assert p.gap_s() == pytest.approx(0.002)
    assert p.open_streams == 0


def test_a_gap_under_the_floor_is_no_gap_and_zero_is_off() -> None:
    p = Pacer(writes_per_s=10_000)
    with p.stream():  # 0.1 ms: less than a timer is worth
        assert MIN_GAP_S > 1 / 10_000 and p.gap_s() == 0.0
    off = Pacer(writes_per_s=0)
    with off.stream(), off.stream():
        assert off.gap_s() == 0.0


def test_a_stream_that_fails_is_no_longer_counted() -> None:
    p = Pacer(writes_per_s=1)
    with pytest.raises(RuntimeError), p.stream():
        raise RuntimeError("client gone")
    assert p.open_streams == 0


def _bodies(held: HeldClient) -> list[bytes]:
    return [m["body"] for m in held.messages if m["type"] == "http.response.body" and m["body"]]


async def _stream(make_client: ClientFactory, rate: float, path: str, body: Any) -> HeldClient:
    async with make_client(stream_writes_per_s=rate) as c:
        app = app_of(c)
        held = HeldClient()
        await asyncio.wait_for(held.call(app, "POST", path, body), 10)
        assert app.state.services.pacer.open_streams == 0
        return held


async def test_a_paced_stream_sends_the_same_bytes_in_fewer_writes(
    make_client: ClientFactory,
) -> None:
    # 5 writes/s with one stream open: 200 ms after a write, far longer than the tiny model
    # takes for the rest, so everything after the first write arrives while it waits
    path = f"/v1/models/{LM}/generate"
    body = {"prompt": "ROMEO:", "max_tokens": 40, "seed": 7, "stream": True}
    paced = await _stream(make_client, 5, path, body)
    plain = await _stream(make_client, 0, path, body)
    assert b"".join(_bodies(paced)) == b"".join(_bodies(plain))
    with_tokens = [b for b in _bodies(paced) if b"event: token" in b]
    assert len(with_tokens) <= 3
    assert b"".join(with_tokens).count(b"event: token") == 40
    # (over the wire `done` may come in a message of its own, after the last tokens' write)
    assert b"event: done" in b"".join(_bodies(paced)[-3:])
    assert _bodies(paced)[-1] == b"data: [DONE]\n\n"


def _completion_texts(held: HeldClient) -> dict[int, str]:
    texts: dict[int, str] = {}
    for line in b"".join(_bodies(held)).decode().splitlines():
        if line.startswith("data: {"):
            chunk: dict[str, Any] = json.loads(line[6:])
            for ch in chunk["choices"]:
                texts[ch["index"]] = texts.get(ch["index"], "") + ch["text"]
    return texts


async def test_an_openai_stream_is_paced_too(make_client: ClientFactory) -> None:
    body = {"model": LM, "prompt": "to be", "max_tokens": 40, "seed": 3, "stream": True, "n": 2}
    paced = await _stream(make_client, 5, "/v1/completions", body)
    plain = await _stream(make_client, 0, "/v1/completions", body)
    texts = _completion_texts(paced)
    assert texts == _completion_texts(plain) and len(texts) == 2 and all(texts.values())
    assert len(_bodies(paced)) <= 4
    assert _bodies(paced)[-1] == b"data: [DONE]\n\n"


async def test_a_client_gone_while_its_stream_waits_frees_it(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with make_client(stream_writes_per_s=1) as c:  # one stream: 1 s after each write
        app = app_of(c)
        pacer = app.state.services.pacer
        # The engine is gated after its first decode step (one token out, then onnxruntime's
        # call waits), so the first write cannot carry the whole generation and its end: the
        # stream is certain to be open and waiting out its gap when the client leaves.
        gate = gate_decode_steps(app, monkeypatch)
        in_gap = asyncio.Event()
        real_after_write = pacer.after_write

        async def after_write() -> None:
            in_gap.set()
            await real_after_write()

        monkeypatch.setattr(pacer, "after_write", after_write)
        held = HeldClient()
        body = {"prompt": "ROMEO:", "max_tokens": 40, "stream": True}
        task = asyncio.create_task(held.call(app, "POST", f"/v1/models/{LM}/generate", body))
        try:
            await asyncio.wait_for(in_gap.wait(), 10)
            assert pacer.open_streams == 1
            assert b"event: done" not in held.body and b"event: token" in held.body
            held.gone.set()  # the client leaves while the stream waits out its gap
            await asyncio.wait_for(task, 5)
        finally:
            gate.set()
        assert pacer.open_streams == 0
        await no_streams_left(app, within_s=5.0)
