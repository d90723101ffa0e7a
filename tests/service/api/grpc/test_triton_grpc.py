"""The v2 protocol over gRPC through the real `tritonclient.grpc` (sync, asyncio and
`start_stream`) against a live server, checked against what HTTP answers for the same input."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tga
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from tests.service.conftest import ALL_MODELS, CHAR_MODELS, CLS, LM
from tests.service.live import LiveServer, clock, live

__all__ = ["clock", "live"]  # the fixtures, used by name


@pytest.fixture(scope="module")
def grpc_client(live: LiveServer) -> Iterator[tg.InferenceServerClient]:
    client = tg.InferenceServerClient(live.grpc)
    yield client
    client.close()


@pytest.fixture(scope="module")
def http_client(live: LiveServer) -> Iterator[th.InferenceServerClient]:
    client = th.InferenceServerClient(live.url)
    yield client
    client.close()


def text(texts: list[str], mod: Any = tg) -> Any:
    inp = mod.InferInput("TEXT", [len(texts)], "BYTES")
    inp.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
    return inp


def status(e: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(e.value.status())


# -- health and metadata -----------------------------------------------------------------------


def test_health_metadata_config(grpc_client: tg.InferenceServerClient) -> None:
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    for model in ALL_MODELS:
        assert grpc_client.is_model_ready(model) and grpc_client.is_model_ready(model, "1")
    assert not grpc_client.is_model_ready("no-such-model")
    meta = grpc_client.get_server_metadata(as_json=True)
    assert meta["name"] == "rnnserve" and "sequence" in meta["extensions"]
    lm = grpc_client.get_model_metadata(LM, as_json=True)
    assert [i["name"] for i in lm["inputs"]] == ["TEXT", "TOKEN_IDS"]
    assert lm["platform"] == "onnxruntime_onnx" and lm["versions"] == ["1"]
    cfg = grpc_client.get_model_config(LM, as_json=True)["config"]
    assert cfg["backend"] == "onnxruntime" and "sequence_batching" in cfg
    assert [i["data_type"] for i in cfg["input"]] == ["TYPE_STRING", "TYPE_INT64"]
    with pytest.raises(InferenceServerException) as e:
        grpc_client.get_model_metadata("no-such-model")
    assert status(e) == "StatusCode.NOT_FOUND" and "no-such-model" in e.value.message()


# -- stateless inference: what HTTP answers --------------------------------------------------


def test_infer_equals_http(
    grpc_client: tg.InferenceServerClient, http_client: th.InferenceServerClient
) -> None:
    for model in (CLS, LM):
        texts = ["a fine day", "terrible"]
        g = grpc_client.infer(model, [text(texts)])
        h = http_client.infer(model, [text(texts, th)])
        np.testing.assert_array_equal(g.as_numpy("PROBS"), h.as_numpy("PROBS"))
        assert g.get_response().model_version == "1"
    labels = grpc_client.infer(CLS, [text(["good"])], outputs=[tg.InferRequestedOutput("LABEL")])
    assert labels.as_numpy("LABEL").shape == (1,) and labels.as_numpy("PROBS") is None


def test_token_ids_raw_and_typed_contents(grpc_client: tg.InferenceServerClient) -> None:
    ids = np.array([[1, 2, 3, 4]], dtype=np.int64)
    inp = tg.InferInput("TOKEN_IDS", [1, 4], "INT64")
    inp.set_data_from_numpy(ids)  # raw_input_contents
    raw = grpc_client.infer(LM, [inp], request_id="r-1")
    assert raw.get_response().id == "r-1"
    # the same tensor as typed contents (as a client compiled from the proto may send it)
    from service.api.grpc import inference_pb2 as pb

    req = pb.ModelInferRequest(model_name=LM)
    t = req.inputs.add(name="TOKEN_IDS", datatype="INT64", shape=[1, 4])
    t.contents.int64_contents.extend([1, 2, 3, 4])
    typed = _raw_call(grpc_client, "ModelInfer", req, pb.ModelInferResponse)
    probs = np.frombuffer(typed.raw_output_contents[0], dtype=np.float32)
    np.testing.assert_array_equal(probs, raw.as_numpy("PROBS").ravel())


def _raw_call(client: tg.InferenceServerClient, method: str, req: Any, resp_type: Any) -> Any:
    """A call with this server's own compiled messages, on the client's channel."""
    call = client._channel.unary_unary(
        f"/inference.GRPCInferenceService/{method}",
        request_serializer=type(req).SerializeToString,
        response_deserializer=resp_type.FromString,
    )
    return call(req)


# -- sequences: gRPC and HTTP are one session service -----------------------------------------

CHUNKS = ["It was a ", "great", " movie, truly", " good! ", "fin"]


def test_sequence_equals_whole_text_and_continues_over_http(
    grpc_client: tg.InferenceServerClient, live: LiveServer
) -> None:
    model = CHAR_MODELS[1]
    for i, chunk in enumerate(CHUNKS[:3]):
        grpc_client.infer(model, [text([chunk])], sequence_id=4242, sequence_start=i == 0)
    # the sequence is the native session "4242": HTTP feeds it on, gRPC ends it
    r = httpx.post(f"http://{live.url}/v1/sessions/4242/feed", json={"text": CHUNKS[3]})
    assert r.status_code == 200, r.text
    last = grpc_client.infer(model, [text([CHUNKS[4]])], sequence_id=4242, sequence_end=True)
    whole = grpc_client.infer(model, [text(["".join(CHUNKS)])]).as_numpy("PROBS")
    np.testing.assert_allclose(last.as_numpy("PROBS"), whole, atol=1e-5)
    assert httpx.get(f"http://{live.url}/v1/sessions/4242").status_code == 404
    # a sequence begun over HTTP goes on over gRPC
    s = httpx.post(
        f"http://{live.url}/v1/sessions", json={"model": model, "session_id": "from-http"}
    )
    assert s.status_code == 201, s.text
    httpx.post(f"http://{live.url}/v1/sessions/from-http/feed", json={"text": "hello "})
    out = grpc_client.infer(model, [text(["world"])], sequence_id="from-http")
    whole = grpc_client.infer(model, [text(["hello world"])]).as_numpy("PROBS")
    np.testing.assert_allclose(out.as_numpy("PROBS"), whole, atol=1e-5)
    with pytest.raises(InferenceServerException) as e:
        grpc_client.infer(model, [text(["x"])], sequence_id=4242)
    assert status(e) == "StatusCode.FAILED_PRECONDITION" or "does not exist" in e.value.message()
    assert "sequence 4242 does not exist" in e.value.message()


def _stream(client: tg.InferenceServerClient) -> queue.Queue[tuple[Any, Any]]:
    got: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    return got


def test_stream_carries_a_sequence_in_order(grpc_client: tg.InferenceServerClient) -> None:
    got = _stream(grpc_client)
    try:
        for i, chunk in enumerate(CHUNKS):  # sent without waiting: applied in order
            grpc_client.async_stream_infer(
                LM,
                [text([chunk])],
                request_id=str(i),
                sequence_id=9001,
                sequence_start=i == 0,
                sequence_end=i == len(CHUNKS) - 1,
            )
        results = [got.get(timeout=30) for _ in CHUNKS]
    finally:
        grpc_client.stop_stream()
    assert all(err is None for _, err in results), results
    by_id = {r.get_response().id: r.as_numpy("PROBS") for r, _ in results}
    for i in range(len(CHUNKS)):
        prefix = grpc_client.infer(LM, [text(["".join(CHUNKS[: i + 1])])]).as_numpy("PROBS")
        np.testing.assert_allclose(by_id[str(i)], prefix, atol=1e-5)


def test_stream_error_answers_on_the_stream_and_it_goes_on(
    grpc_client: tg.InferenceServerClient,
) -> None:
    got = _stream(grpc_client)
    try:
        grpc_client.async_stream_infer("no-such-model", [text(["x"])], request_id="bad")
        _, err = got.get(timeout=30)
        assert err is not None and "no-such-model" in err.message()
        grpc_client.async_stream_infer(LM, [text(["x"])], request_id="good")
        result, err = got.get(timeout=30)
        assert err is None and result.get_response().id == "good"
    finally:
        grpc_client.stop_stream()


# -- generation ------------------------------------------------------------------------------


def test_stream_generation_equals_native(
    grpc_client: tg.InferenceServerClient, live: LiveServer
) -> None:
    params = {"max_tokens": 12, "temperature": 0.0}
    got = _stream(grpc_client)
    try:
        grpc_client.async_stream_infer(
            LM,
            [text(["ROMEO:"])],
            request_id="g",
            parameters=params,
            enable_empty_final_response=True,
        )
        tokens, final = [], None
        while final is None:
            result, err = got.get(timeout=30)
            assert err is None, err
            resp = result.get_response()
            if resp.parameters["triton_final_response"].bool_param:
                final = resp
            else:
                tokens.append(result.as_numpy("TEXT")[0].decode())
    finally:
        grpc_client.stop_stream()
    native = httpx.post(
        f"http://{live.url}/v1/models/{LM}/generate", json={"prompt": "ROMEO:", **params}
    ).json()
    assert "".join(tokens) == native["text"] and len(tokens) == 12
    assert final.parameters["finish_reason"].string_param == native["finish_reason"]
    assert final.parameters["completion_tokens"].int64_param == 12
    # unary: the whole text at once
    whole = grpc_client.infer(LM, [text(["ROMEO:"])], parameters=params)
    assert whole.as_numpy("TEXT")[0].decode() == native["text"]


def test_generation_parameters_are_checked(grpc_client: tg.InferenceServerClient) -> None:
    for params, seq, field in (
        ({"max_tokens": 0}, 0, "max_tokens"),
        ({"max_tokens": 5, "temperature": -1.0}, 0, "temperature"),
        ({"max_tokens": 5}, 5, "sequence_id"),
    ):
        with pytest.raises(InferenceServerException) as e:
            grpc_client.infer(LM, [text(["a"])], parameters=params, sequence_id=seq)
        assert status(e) == "StatusCode.INVALID_ARGUMENT" and field in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        grpc_client.infer(CLS, [text(["a"])], parameters={"max_tokens": 3})
    assert "classifier" in e.value.message()


# -- errors: HTTP's messages, as status codes -------------------------------------------------


def test_client_mistakes_are_invalid_argument_with_https_message(
    grpc_client: tg.InferenceServerClient, http_client: th.InferenceServerClient
) -> None:
    bad = tg.InferInput("TEXT", [1], "FP32")
    bad.set_data_from_numpy(np.zeros(1, np.float32))
    hbad = th.InferInput("TEXT", [1], "FP32")
    hbad.set_data_from_numpy(np.zeros(1, np.float32))
    with pytest.raises(InferenceServerException) as g:
        grpc_client.infer(LM, [bad])
    with pytest.raises(InferenceServerException) as h:
        http_client.infer(LM, [hbad])
    assert status(g) == "StatusCode.INVALID_ARGUMENT" and h.value.status() == "400"
    assert g.value.message() == h.value.message()
    with pytest.raises(InferenceServerException) as g:
        grpc_client.infer(LM, [text(["a"])], parameters={"no_such": 1})
    assert status(g) == "StatusCode.INVALID_ARGUMENT" and "no_such" in g.value.message()


async def test_asyncio_client(live: LiveServer) -> None:
    async with tga.InferenceServerClient(live.grpc) as client:
        assert await client.is_server_ready()
        r = await client.infer(CLS, [text(["lovely"], tga)])
        assert r.as_numpy("PROBS").shape[0] == 1

        async def requests() -> Any:
            for i, chunk in enumerate(CHUNKS[:2]):
                yield {
                    "model_name": LM,
                    "inputs": [text([chunk], tga)],
                    "request_id": str(i),
                    "sequence_id": 777,
                    "sequence_start": i == 0,
                    "sequence_end": i == 1,
                }

        seen = []
        async for result, err in client.stream_infer(requests()):
            assert err is None, err
            seen.append(result.get_response().id)
            if len(seen) == 2:
                break
        assert sorted(seen) == ["0", "1"]
