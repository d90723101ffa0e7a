"""The v2 protocol through the real `tritonclient` (sync and asyncio) against a live uvicorn."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as tc
import tritonclient.http.aio as tca
from tritonclient.utils import InferenceServerException

from service.contract import CharTokenizerSpec, load_manifest
from tests.conftest import FIXTURE_MODELS
from tests.service.conftest import ALL_MODELS, CHAR_MODELS, CLASSIFIERS, CLS, LM, FakeClock
from tests.service.live import TTL, LiveServer, clock, live

__all__ = ["clock", "live"]  # the fixtures, used by name


@pytest.fixture(scope="module")
def triton(live: LiveServer) -> Iterator[tc.InferenceServerClient]:
    client = tc.InferenceServerClient(live.url)
    yield client
    client.close()


def text_input(texts: list[str], binary: bool = True) -> tc.InferInput:
    inp = tc.InferInput("TEXT", [len(texts)], "BYTES")
    inp.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object), binary_data=binary)
    return inp


def native_probs(live: LiveServer, model: str, texts: list[str]) -> np.ndarray:
    """A classifier's probabilities through the native API, in label order."""
    r = httpx.post(f"http://{live.url}/v1/models/{model}/predict", json={"inputs": texts})
    assert r.status_code == 200, r.text
    return np.array([list(out["probs"].values()) for out in r.json()["outputs"]])


# -- health and metadata -----------------------------------------------------------------------


def test_health_and_readiness(triton: tc.InferenceServerClient) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    for model in ALL_MODELS:
        assert triton.is_model_ready(model)
        assert triton.is_model_ready(model, "1")
    assert not triton.is_model_ready("no-such-model")
    assert not triton.is_model_ready(LM, "7")


def test_server_and_model_metadata(triton: tc.InferenceServerClient) -> None:
    meta = triton.get_server_metadata()
    assert meta["name"] == "rnnserve"
    assert {"binary_tensor_data", "sequence"} <= set(meta["extensions"])

    cls = triton.get_model_metadata(CLS)
    assert cls["versions"] == ["1"] and cls["platform"] == "onnxruntime_onnx"
    assert cls["inputs"] == [{"name": "TEXT", "datatype": "BYTES", "shape": [-1]}]
    outs = {o["name"]: o for o in cls["outputs"]}
    labels = cls["parameters"]["labels"]
    assert outs["LABEL"]["datatype"] == "BYTES"
    assert outs["PROBS"] == {"name": "PROBS", "datatype": "FP32", "shape": [-1, len(labels)]}

    lm = triton.get_model_metadata(LM, "1")
    assert [i["name"] for i in lm["inputs"]] == ["TEXT", "TOKEN_IDS"]
    assert lm["inputs"][1]["datatype"] == "INT64"
    k = lm["parameters"]["vocab_size"]
    assert {o["name"]: o["shape"] for o in lm["outputs"]} == {"PROBS": [-1, k], "LOGITS": [-1, k]}

    with pytest.raises(InferenceServerException) as e:
        triton.get_model_metadata("no-such-model")
    assert e.value.status() == "404" and "no-such-model" in e.value.message()


# -- stateless inference -----------------------------------------------------------------------


TEXTS = ["a truly wonderful film", "dull and far too long", "ok"]


def test_classifier_binary_default(triton: tc.InferenceServerClient, live: LiveServer) -> None:
    res = triton.infer(CLS, [text_input(TEXTS)])  # binary in, binary out (tritonclient default)
    assert res.get_response()["outputs"][0]["parameters"]["binary_data_size"] > 0
    probs = res.as_numpy("PROBS")
    assert probs.dtype == np.float32 and probs.shape == (3, 2)
    np.testing.assert_allclose(probs, native_probs(live, CLS, TEXTS), atol=1e-6)
    labels = triton.get_model_metadata(CLS)["parameters"]["labels"]
    assert [x.decode() for x in res.as_numpy("LABEL")] == [labels[i] for i in probs.argmax(1)]
    logits = res.as_numpy("LOGITS")
    e = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(e / e.sum(1, keepdims=True), probs, atol=1e-6)


def test_compressed_request(triton: tc.InferenceServerClient) -> None:
    plain = triton.infer(CLS, [text_input(TEXTS)]).as_numpy("PROBS")
    for algorithm in ("gzip", "deflate"):
        res = triton.infer(CLS, [text_input(TEXTS)], request_compression_algorithm=algorithm)
        np.testing.assert_array_equal(res.as_numpy("PROBS"), plain)


def test_classifier_json_both_ways(triton: tc.InferenceServerClient) -> None:
    binary = triton.infer(CLS, [text_input(TEXTS)]).as_numpy("PROBS")
    outputs = [tc.InferRequestedOutput(n, binary_data=False) for n in ("LABEL", "PROBS")]
    res = triton.infer(CLS, [text_input(TEXTS, binary=False)], outputs=outputs, request_id="r1")
    body = res.get_response()
    assert body["id"] == "r1" and [o["name"] for o in body["outputs"]] == ["LABEL", "PROBS"]
    assert all("data" in o and "parameters" not in o for o in body["outputs"])
    np.testing.assert_allclose(res.as_numpy("PROBS"), binary, atol=1e-6)


def test_language_model_text_and_token_ids(triton: tc.InferenceServerClient) -> None:
    text = "the quick brown fox"
    by_text = triton.infer(LM, [text_input([text])]).as_numpy("PROBS")
    spec = load_manifest(FIXTURE_MODELS / LM).tokenizer
    assert isinstance(spec, CharTokenizerSpec)
    vocab = spec.vocab
    ids = np.array([[vocab.index(c) for c in text]], dtype=np.int64)
    inp = tc.InferInput("TOKEN_IDS", list(ids.shape), "INT64")
    inp.set_data_from_numpy(ids)
    by_ids = triton.infer(LM, [inp], model_version="1").as_numpy("PROBS")
    assert by_text.shape == (1, len(vocab))
    np.testing.assert_allclose(by_ids, by_text, atol=1e-6)
    assert abs(float(by_text.sum()) - 1.0) < 1e-4


# -- sequences ---------------------------------------------------------------------------------


CHUNKS = ["It was a ", "great", " movie, truly", " good! ", "fin"]


@pytest.mark.parametrize("model", ALL_MODELS)
def test_sequence_equals_whole_text(triton: tc.InferenceServerClient, model: str) -> None:
    seq_id = 1000 + ALL_MODELS.index(model)
    outs = []
    for i, chunk in enumerate(CHUNKS):
        res = triton.infer(
            model,
            [text_input([chunk])],
            sequence_id=seq_id,
            sequence_start=i == 0,
            sequence_end=i == len(CHUNKS) - 1,
        )
        outs.append(res.as_numpy("PROBS"))
    whole = triton.infer(model, [text_input(["".join(CHUNKS)])]).as_numpy("PROBS")
    np.testing.assert_allclose(outs[-1], whole, atol=1e-5)
    prefix = triton.infer(model, [text_input(["".join(CHUNKS[:2])])]).as_numpy("PROBS")
    np.testing.assert_allclose(outs[1], prefix, atol=1e-5)
    # sequence_end freed the state: continuing without sequence_start is a clear 400
    with pytest.raises(InferenceServerException) as e:
        triton.infer(model, [text_input(["more"])], sequence_id=seq_id)
    assert e.value.status() == "400"
    assert f"sequence {seq_id} does not exist" in e.value.message()
    assert "sequence_start" in e.value.message()


def test_string_sequence_id_and_native_session_are_one(
    triton: tc.InferenceServerClient, live: LiveServer
) -> None:
    model = CHAR_MODELS[0]
    triton.infer(model, [text_input(["hello "])], sequence_id="chat-1", sequence_start=True)
    # the same id is a native session, at version 1
    info = httpx.get(f"http://{live.url}/v1/sessions/chat-1").json()
    assert info["model"] == model and info["version"] == 1 and info["tokens_seen"] == 6
    r = httpx.post(f"http://{live.url}/v1/sessions/chat-1/feed", json={"text": "wor"})
    assert r.status_code == 200 and r.json()["version"] == 2
    res = triton.infer(model, [text_input(["ld"])], sequence_id="chat-1", sequence_end=True)
    whole = triton.infer(model, [text_input(["hello world"])]).as_numpy("PROBS")
    np.testing.assert_allclose(res.as_numpy("PROBS"), whole, atol=1e-5)
    assert httpx.get(f"http://{live.url}/v1/sessions/chat-1").status_code == 404


def test_sequence_start_restarts_an_existing_sequence(triton: tc.InferenceServerClient) -> None:
    triton.infer(LM, [text_input(["zzzz"])], sequence_id=77, sequence_start=True)
    res = triton.infer(LM, [text_input(["abc"])], sequence_id=77, sequence_start=True)
    fresh = triton.infer(LM, [text_input(["abc"])]).as_numpy("PROBS")
    np.testing.assert_allclose(res.as_numpy("PROBS"), fresh, atol=1e-5)
    triton.infer(LM, [text_input(["d"])], sequence_id=77, sequence_end=True)


def test_sequence_errors(triton: tc.InferenceServerClient, clock: FakeClock) -> None:
    with pytest.raises(InferenceServerException) as e:
        triton.infer(LM, [text_input(["x"])], sequence_id="never-started")
    assert e.value.status() == "400" and "'never-started' does not exist" in e.value.message()

    triton.infer(LM, [text_input(["abc"])], sequence_id=88, sequence_start=True)
    with pytest.raises(InferenceServerException) as e:
        triton.infer(CHAR_MODELS[0], [text_input(["x"])], sequence_id=88)
    assert e.value.status() == "400" and f"belongs to model {LM!r}" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        triton.infer(LM, [text_input(["a", "b"])], sequence_id=88)
    assert "exactly one row" in e.value.message()

    clock.advance(TTL + 1)
    with pytest.raises(InferenceServerException) as e:
        triton.infer(LM, [text_input(["d"])], sequence_id=88)
    assert e.value.status() == "400"
    assert "sequence 88 expired" in e.value.message()


def test_failed_request_leaves_the_sequence_unchanged(triton: tc.InferenceServerClient) -> None:
    model = CHAR_MODELS[2]
    triton.infer(model, [text_input(["abc"])], sequence_id=99, sequence_start=True)
    with pytest.raises(InferenceServerException) as e:
        triton.infer(model, [text_input(["\u2603 snowman"])], sequence_id=99)
    assert e.value.status() == "400" and "vocabulary" in e.value.message()
    res = triton.infer(model, [text_input(["def"])], sequence_id=99, sequence_end=True)
    whole = triton.infer(model, [text_input(["abcdef"])]).as_numpy("PROBS")
    np.testing.assert_allclose(res.as_numpy("PROBS"), whole, atol=1e-5)


# -- errors ------------------------------------------------------------------------------------


def test_client_mistakes_are_400(triton: tc.InferenceServerClient) -> None:
    wrong = tc.InferInput("TOKEN_IDS", [1, 2], "INT64")
    wrong.set_data_from_numpy(np.array([[1, 2]], dtype=np.int64))
    cases = [
        (CLS, [wrong], "no input(s) ['TOKEN_IDS']"),
        (LM, [text_input(["a"]), wrong], "exactly one of the inputs"),
        (LM, [text_input([""])], "no tokens"),
    ]
    for model, inputs, match in cases:
        with pytest.raises(InferenceServerException) as e:
            triton.infer(model, inputs)
        assert e.value.status() == "400", e.value
        assert match in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        triton.infer(CLS, [text_input(["a"])], outputs=[tc.InferRequestedOutput("NOPE")])
    assert e.value.status() == "400" and "no output 'NOPE'" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        triton.infer("no-such-model", [text_input(["a"])])
    assert e.value.status() == "404"
    with pytest.raises(InferenceServerException) as e:
        triton.infer(LM, [text_input(["a"])], model_version="9")
    assert e.value.status() == "404" and "no version '9'" in e.value.message()


@pytest.mark.parametrize(
    ("headers", "body", "match"),
    [
        ({"Inference-Header-Content-Length": "abc"}, b'{"inputs": []}', "must be an integer"),
        ({"Inference-Header-Content-Length": "999"}, b'{"inputs": []}', "must be an integer"),
        ({"Inference-Header-Content-Length": "4"}, b'{"inputs": []}', "not valid JSON"),
        ({}, b"not json", "not valid JSON"),
        ({"Content-Encoding": "gzip"}, b"{}", "not valid gzip"),
    ],
)
def test_malformed_bodies_are_clear_400s(
    live: LiveServer, headers: dict[str, str], body: bytes, match: str
) -> None:
    r = httpx.post(f"http://{live.url}/v2/models/{CLS}/infer", content=body, headers=headers)
    assert r.status_code == 400, r.text
    assert match in r.json()["error"]


def test_binary_sizes_that_do_not_add_up(live: LiveServer) -> None:
    raw = b"\x05\x00\x00\x00hello"
    for size, match in [(20, "runs past the end"), (4, "belong to no input")]:
        head = (
            '{"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", '
            f'"parameters": {{"binary_data_size": {size}}}}}]}}'
        ).encode()
        r = httpx.post(
            f"http://{live.url}/v2/models/{CLS}/infer",
            content=head + raw,
            headers={"Inference-Header-Content-Length": str(len(head))},
        )
        assert r.status_code == 400 and match in r.json()["error"], r.text


# -- asyncio client ----------------------------------------------------------------------------


async def test_async_client(live: LiveServer) -> None:
    async with tca.InferenceServerClient(live.url) as client:
        assert await client.is_server_live()
        assert await client.is_model_ready(CLASSIFIERS[1])
        meta = await client.get_model_metadata(CLASSIFIERS[1])
        assert meta["name"] == CLASSIFIERS[1]
        whole = (await client.infer(CLASSIFIERS[1], [text_input(["good fun, great"])])).as_numpy(
            "PROBS"
        )
        outs = []
        for i, chunk in enumerate(["good ", "fun, ", "great"]):
            res = await client.infer(
                CLASSIFIERS[1],
                [text_input([chunk])],
                sequence_id="async-seq",
                sequence_start=i == 0,
                sequence_end=i == 2,
            )
            outs.append(res.as_numpy("PROBS"))
        np.testing.assert_allclose(outs[-1], whole, atol=1e-5)
        with pytest.raises(InferenceServerException) as e:
            await client.infer(CLASSIFIERS[1], [text_input(["x"])], sequence_id="async-seq")
        assert e.value.status() == "400"


async def test_concurrent_requests_on_one_sequence_apply_once_each(live: LiveServer) -> None:
    model = CHAR_MODELS[3]
    async with tca.InferenceServerClient(live.url) as client:
        await client.infer(model, [text_input(["x"])], sequence_id=555, sequence_start=True)
        await asyncio.gather(
            *(client.infer(model, [text_input(["ab"])], sequence_id=555) for _ in range(12))
        )
        res = await client.infer(model, [text_input(["!"])], sequence_id=555, sequence_end=True)
        whole = await client.infer(model, [text_input(["x" + "ab" * 12 + "!"])])
    np.testing.assert_allclose(res.as_numpy("PROBS"), whole.as_numpy("PROBS"), atol=1e-5)
