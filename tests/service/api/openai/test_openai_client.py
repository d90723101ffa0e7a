"""The OpenAI-compatible surface through the real `openai` client against a live uvicorn."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import LONG
from tests.service.conftest import CHAR_MODELS, CLS, LM, FakeClock
from tests.service.live import LiveServer, clock, live

__all__ = ["clock", "live"]  # the fixtures, used by name


@pytest.fixture(scope="module")
def client(live: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"http://{live.url}/openai/v1", api_key="unused", max_retries=0
    ) as c:
        yield c


def native_generate(live: LiveServer, **body: object) -> dict[str, object]:
    r = httpx.post(f"http://{live.url}/v1/models/{LM}/generate", json=body)
    assert r.status_code == 200, r.text
    out: dict[str, object] = r.json()
    return out


def test_models(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert set(CHAR_MODELS) <= set(ids) and CLS not in ids  # classifiers cannot complete
    assert client.models.retrieve(LM).id == LM
    with pytest.raises(openai.NotFoundError, match="classify model"):
        client.models.retrieve(CLS)


def test_completion_matches_native_generation(client: openai.OpenAI, live: LiveServer) -> None:
    c = client.completions.create(model=LM, prompt="hello", max_tokens=20, seed=7, temperature=0.8)
    assert c.object == "text_completion" and c.model == LM and len(c.choices) == 1
    choice = c.choices[0]
    assert choice.finish_reason == "length" and len(choice.text) == 20
    assert c.usage is not None
    assert (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.total_tokens) == (5, 20, 25)
    # the same engine path as the native API: same seed and parameters -> same text
    native = native_generate(
        live, prompt="hello", max_tokens=20, seed=7, temperature=0.8, top_k=0, top_p=1.0
    )
    assert native["text"] == choice.text


def test_seed_determinism_and_choices(client: openai.OpenAI) -> None:
    kw = {"model": LM, "max_tokens": 12, "temperature": 1.0, "seed": 123}
    a = client.completions.create(prompt=["to be", "or not"], n=2, **kw)  # type: ignore[arg-type]
    b = client.completions.create(prompt=["to be", "or not"], n=2, **kw)  # type: ignore[arg-type]
    assert [ch.index for ch in a.choices] == [0, 1, 2, 3]
    assert [ch.text for ch in a.choices] == [ch.text for ch in b.choices]
    assert a.choices[0].text != a.choices[1].text  # choice j of a prompt samples with seed + j
    single = client.completions.create(prompt="to be", **{**kw, "seed": 124})  # type: ignore[arg-type]
    assert single.choices[0].text == a.choices[1].text
    assert a.usage is not None and a.usage.prompt_tokens == len("to be") + len("or not")
    assert a.usage.completion_tokens == 4 * 12
    assert a.system_fingerprint is not None and a.system_fingerprint.startswith("fp_")


def test_streaming_equals_non_streaming(client: openai.OpenAI) -> None:
    kw = {"model": LM, "prompt": "the ", "max_tokens": 15, "seed": 5}
    whole = client.completions.create(**kw)  # type: ignore[call-overload]
    stream = client.completions.create(stream=True, stream_options={"include_usage": True}, **kw)  # type: ignore[call-overload]
    chunks = list(stream)
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert text == whole.choices[0].text
    finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert finals[-1] == "length" and set(finals[:-1]) == {None}
    assert not chunks[-1].choices and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 15


def test_raw_sse_ends_with_done(live: LiveServer) -> None:
    body = {"model": LM, "prompt": "ab", "max_tokens": 3, "stream": True, "n": 2}
    with httpx.stream("POST", f"http://{live.url}/v1/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]" and lines.count("data: [DONE]") == 1


def test_stop_echo_and_logprobs(client: openai.OpenAI) -> None:
    c = client.completions.create(
        model=LM, prompt="hello", max_tokens=40, seed=1, stop=["e", "a"], temperature=1.0
    )
    ch = c.choices[0]
    assert "e" not in ch.text and "a" not in ch.text
    assert ch.finish_reason in ("stop", "length")
    e = client.completions.create(model=LM, prompt="hello", max_tokens=5, seed=1, echo=True)
    plain = client.completions.create(model=LM, prompt="hello", max_tokens=5, seed=1)
    assert e.choices[0].text == "hello" + plain.choices[0].text
    lp = client.completions.create(model=LM, prompt="hello", max_tokens=6, seed=1, logprobs=2)
    got = lp.choices[0].logprobs
    assert got is not None and got.tokens is not None and got.token_logprobs is not None
    assert "".join(got.tokens) == lp.choices[0].text
    assert lp.choices[0].text.startswith(plain.choices[0].text)  # same seed, one more token
    assert got.text_offset == list(range(6))
    assert all(x <= 0 for x in got.token_logprobs)
    assert got.top_logprobs is not None and all(len(t) == 2 for t in got.top_logprobs)


def test_errors_are_typed(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="no model named"):
        client.completions.create(model="no-such-model", prompt="x")
    with pytest.raises(openai.NotFoundError, match="classify model"):
        client.completions.create(model=CLS, prompt="x")
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=LM, prompt="x", extra_body={"mirostat": 2})
    assert e.value.param == "mirostat" and "unsupported parameter" in e.value.message
    with pytest.raises(openai.BadRequestError, match="presence_penalty") as e:
        client.completions.create(model=LM, prompt="x", presence_penalty=0.5)
    assert e.value.param == "presence_penalty"
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model=LM, prompt="x", temperature=3)
    with pytest.raises(openai.BadRequestError, match="max_tokens must be <="):
        client.completions.create(model=LM, prompt="x", max_tokens=LONG + 1)
    with pytest.raises(openai.BadRequestError, match="token-id prompts"):
        client.completions.create(model=LM, prompt=[1, 2, 3])
    with pytest.raises(openai.BadRequestError, match="vocabulary"):
        client.completions.create(model=LM, prompt="\u2603")
    with pytest.raises(openai.NotFoundError, match="chat completions are not served"):
        client.chat.completions.create(model=LM, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model=LM, prompt="x", extra_body={"session_id": "nope"})


def test_session_extension(client: openai.OpenAI, live: LiveServer) -> None:
    base = f"http://{live.url}/v1/sessions"
    r = httpx.post(base, json={"model": LM, "session_id": "oa-1"})
    assert r.status_code == 201
    kw = {"model": LM, "max_tokens": 8, "seed": 3, "extra_body": {"session_id": "oa-1"}}
    first = client.completions.create(prompt="once upon", **kw)  # type: ignore[call-overload]
    dump = first.model_dump()
    assert dump["session_id"] == "oa-1" and dump["session_version"] == 1
    info = httpx.get(f"{base}/oa-1").json()
    assert info["version"] == 1 and info["tokens_seen"] == len("once upon") + 8
    # a retry with the same Idempotency-Key replays without advancing the state
    key = {"Idempotency-Key": "retry-1"}
    a = client.completions.create(prompt=" a", extra_headers=key, **kw)  # type: ignore[call-overload]
    b = client.completions.create(prompt=" a", extra_headers=key, **kw)  # type: ignore[call-overload]
    assert a.choices[0].text == b.choices[0].text
    assert httpx.get(f"{base}/oa-1").json()["version"] == 2
    # streamed too: the replay sends the stored text (its tokens were never streamed)
    skey = {"Idempotency-Key": "retry-2"}
    texts = []
    for _ in range(2):
        stream = client.completions.create(prompt=" b", stream=True, extra_headers=skey, **kw)  # type: ignore[call-overload]
        texts.append("".join(ch.choices[0].text for ch in stream if ch.choices))
    assert texts[0] == texts[1] and len(texts[0]) == 8
    assert httpx.get(f"{base}/oa-1").json()["version"] == 3
    with pytest.raises(openai.BadRequestError, match="belongs to model"):
        client.completions.create(prompt="x", **{**kw, "model": CHAR_MODELS[0]})  # type: ignore[call-overload]
    with pytest.raises(openai.ConflictError):
        client.completions.create(
            prompt="x", **{**kw, "extra_body": {"session_id": "oa-1", "expected_version": 0}}
        )  # type: ignore[call-overload]
    with pytest.raises(openai.BadRequestError, match="n = 1"):
        client.completions.create(prompt="x", n=2, **kw)  # type: ignore[call-overload]


async def test_async_client_streaming(live: LiveServer) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"http://{live.url}/openai/v1", api_key="unused", max_retries=0
    ) as client:
        stream = await client.completions.create(
            model=LM, prompt="q", max_tokens=6, seed=9, stream=True
        )
        text = "".join([ch.choices[0].text async for ch in stream if ch.choices])
        whole = await client.completions.create(model=LM, prompt="q", max_tokens=6, seed=9)
        assert text == whole.choices[0].text and len(text) == 6


def _active_streams(live: LiveServer) -> int:
    return int(live.app.state.local.engine.scheduler(LM).active_streams)


def test_disconnect_mid_stream_frees_the_stream_and_keeps_the_session(live: LiveServer) -> None:
    base = f"http://{live.url}/v1/sessions"
    assert httpx.post(base, json={"model": LM, "session_id": "oa-drop"}).status_code == 201
    body = {"model": LM, "prompt": "x", "max_tokens": LONG, "stream": True, "session_id": "oa-drop"}
    with httpx.stream("POST", f"http://{live.url}/openai/v1/completions", json=body) as r:
        first = next(line for line in r.iter_lines() if line)
        assert first.startswith("data: {")
    deadline = time.monotonic() + 10
    while _active_streams(live):
        assert time.monotonic() < deadline, "the stream was not cancelled"
        time.sleep(0.02)
    info = httpx.get(f"{base}/oa-drop").json()
    assert info["version"] == 0 and info["tokens_seen"] == 0  # nothing committed


def test_error_after_the_first_chunk_is_an_error_event(
    client: openai.OpenAI, live: LiveServer, clock: FakeClock
) -> None:
    base = f"http://{live.url}/v1/sessions"
    assert httpx.post(base, json={"model": LM, "session_id": "oa-exp"}).status_code == 201
    stream = client.completions.create(
        model=LM, prompt="x", max_tokens=1000, stream=True, extra_body={"session_id": "oa-exp"}
    )
    clock.advance(10**6)  # the session expires while generating: the final commit fails
    chunks = iter(stream)
    assert next(chunks).choices[0].text is not None  # tokens arrive first
    with pytest.raises(openai.APIError, match="expired"):
        for _ in chunks:
            pass


@pytest.mark.parametrize("t", [1e-38, 1e-300])
def test_tiny_temperatures_are_greedy_on_native_and_openai(
    client: openai.OpenAI, live: LiveServer, t: float
) -> None:
    """1/t overflowed float32, so such a temperature always sampled token 0 ("\\n\\n\\n...")."""
    greedy = native_generate(live, prompt="hello", max_tokens=20, temperature=0)["text"]
    assert native_generate(live, prompt="hello", max_tokens=20, temperature=t, seed=3)["text"] == (
        greedy
    )
    c = client.completions.create(model=LM, prompt="hello", max_tokens=20, temperature=t, seed=3)
    assert c.choices[0].text == greedy
