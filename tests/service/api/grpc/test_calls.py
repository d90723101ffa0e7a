"""What every gRPC call goes through (`service/api/grpc/calls.py`), with the asyncio client
against the app's own server: API keys in metadata, the admin guard, message size, the request
timeout, status codes and their trailers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc.aio as tga
from tritonclient.utils import InferenceServerException

from service.api.grpc import calls
from service.api.grpc import infer as infer_module
from service.api.grpc import inference_pb2 as pb
from service.errors import ServiceError
from tests.service.conftest import CLS, LM, ClientFactory, app_of, gate_decode_steps

KEY_A, KEY_B = "k" * 40, "j" * 40
KEYS = f"alice:{KEY_A},bob:{KEY_B}"


@contextlib.asynccontextmanager
async def grpc_of(make_client: ClientFactory, **overrides: Any) -> AsyncIterator[Any]:
    async with make_client(grpc_port=0, **overrides) as http:
        app = app_of(http)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.state.grpc_port}") as channel:
            yield app, channel


def rpc(channel: grpc.aio.Channel, method: str, resp: Any) -> Any:
    return channel.unary_unary(
        f"/{calls.SERVICE}/{method}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=resp.FromString,
    )


def text_request(model: str, texts: list[str]) -> pb.ModelInferRequest:
    from service.api.v2 import binary

    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name="TEXT", datatype="BYTES", shape=[len(texts)])
    req.raw_input_contents.append(binary.encode_bytes_elements([t.encode() for t in texts]))
    return req


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "INVALID_ARGUMENT"),
        (401, "UNAUTHENTICATED"),
        (403, "PERMISSION_DENIED"),
        (404, "NOT_FOUND"),
        (409, "FAILED_PRECONDITION"),
        (413, "RESOURCE_EXHAUSTED"),
        (422, "INVALID_ARGUMENT"),
        (429, "RESOURCE_EXHAUSTED"),
        (503, "UNAVAILABLE"),
        (504, "DEADLINE_EXCEEDED"),
        (500, "INTERNAL"),
    ],
)
def test_status_codes_follow_http_statuses(status: int, code: str) -> None:
    e = ServiceError("no", status=status, code="c", field="f", headers={"Retry-After": "2"})
    assert calls.status_of(e).name == code
    assert calls.message_of(e) == "f: no"
    assert calls.trailers_of(e) == (("rnnserve-error-code", "c"), ("retry-after", "2"))


async def test_api_keys_in_metadata(make_client: ClientFactory) -> None:
    async with grpc_of(make_client, api_keys=KEYS, admin_keys="alice") as (_, ch):
        infer = rpc(ch, "ModelInfer", pb.ModelInferResponse)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await infer(text_request(CLS, ["x"]))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "API key is required" in str(e.value.details())
        assert ("rnnserve-error-code", "unauthorized") in tuple(e.value.trailing_metadata() or ())
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await infer(text_request(CLS, ["x"]), metadata=(("authorization", "Bearer nope"),))
        assert "not valid" in str(e.value.details())
        ok = await infer(text_request(CLS, ["x"]), metadata=(("authorization", f"Bearer {KEY_A}"),))
        assert ok.model_name == CLS
        # health stays open (RNNSERVE_AUTH_OPEN_HEALTH), as /v2/health/* over HTTP
        live = await rpc(ch, "ServerLive", pb.ServerLiveResponse)(pb.ServerLiveRequest())
        assert live.live
        # the repository: admin key names only
        index = rpc(ch, "RepositoryIndex", pb.RepositoryIndexResponse)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await index(
                pb.RepositoryIndexRequest(), metadata=(("authorization", f"Bearer {KEY_B}"),)
            )
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and "bob" in str(
            e.value.details()
        )
        found = await index(
            pb.RepositoryIndexRequest(), metadata=(("authorization", f"Bearer {KEY_A}"),)
        )
        assert {m.name for m in found.models} >= {LM, CLS}


async def test_sessions_belong_to_their_key(make_client: ClientFactory) -> None:
    async with grpc_of(make_client, api_keys=KEYS) as (_, ch):
        infer = rpc(ch, "ModelInfer", pb.ModelInferResponse)
        step = text_request(LM, ["abc"])
        step.parameters["sequence_id"].string_param = "mine"
        step.parameters["sequence_start"].bool_param = True
        await infer(step, metadata=(("authorization", f"Bearer {KEY_A}"),))
        del step.parameters["sequence_start"]
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await infer(step, metadata=(("authorization", f"Bearer {KEY_B}"),))
        assert "does not exist" in str(e.value.details())


async def test_repository_load_and_unload(make_client: ClientFactory) -> None:
    async with grpc_of(make_client) as (app, _):
        client = tga.InferenceServerClient(f"127.0.0.1:{app.state.grpc_port}")
        try:
            await client.unload_model(CLS)
            assert not await client.is_model_ready(CLS)
            await client.load_model(CLS, config='{"max_wait_ms": 2}')
            assert await client.is_model_ready(CLS)
            with pytest.raises(InferenceServerException) as e:
                await client.load_model(CLS, config='{"max_wait_ms": "soon"}')
            assert "max_wait_ms" in e.value.message()
        finally:
            await client.close()


async def test_message_size_and_timeout(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with grpc_of(make_client, max_body_bytes=4096, request_timeout_s=0.2) as (app, ch):
        infer = rpc(ch, "ModelInfer", pb.ModelInferResponse)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await infer(text_request(CLS, ["x" * 5000]))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # a generation whose decode steps are held past the request timeout
        gate = gate_decode_steps(app, monkeypatch)
        try:
            gen = text_request(LM, ["a"])
            gen.parameters["max_tokens"].int64_param = 5
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await infer(gen)
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "within 0.2 s" in str(e.value.details())
        finally:
            gate.set()
        ok = await infer(text_request(CLS, ["fine"]))  # the server goes on
        assert np.frombuffer(ok.raw_output_contents[1], np.float32).size == 2


async def test_a_refused_sequence_step_changes_nothing(make_client: ClientFactory) -> None:
    """Output options are checked before the step runs, on gRPC and HTTP alike: a client that
    fixes its request and sends it again feeds its text once."""
    async with grpc_of(make_client) as (app, ch):
        infer = rpc(ch, "ModelInfer", pb.ModelInferResponse)
        step = text_request(LM, ["abc"])
        step.parameters["sequence_id"].string_param = "once"
        step.parameters["sequence_start"].bool_param = True
        await infer(step)
        del step.parameters["sequence_start"]
        bad_output = pb.ModelInferRequest()
        bad_output.CopyFrom(step)
        bad_output.outputs.add(name="NOPE")
        bad_flag = pb.ModelInferRequest()
        bad_flag.CopyFrom(step)
        bad_flag.parameters["binary_data_output"].int64_param = 1
        for bad in (bad_output, bad_flag):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await infer(bad)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        async with http:
            body = {
                "parameters": {"sequence_id": "once", "binary_data_output": 1},
                "inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["d"]}],
            }
            r = await http.post(f"/v2/models/{LM}/infer", json=body)
            assert r.status_code == 400
            info = (await http.get("/v1/sessions/once")).json()
        assert info["version"] == 1 and info["tokens_seen"] == 3


async def test_an_unexpected_error_answers_on_the_stream_and_it_goes_on(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = infer_module.infer

    async def flaky(s: Any, msg: pb.ModelInferRequest, owner: str | None) -> Any:
        if msg.id == "boom":
            raise ValueError("a bug")
        return await real(s, msg, owner)

    monkeypatch.setattr(infer_module, "infer", flaky)
    async with grpc_of(make_client) as (_, ch):
        stream = ch.stream_stream(
            f"/{calls.SERVICE}/ModelStreamInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )
        boom, fine = text_request(CLS, ["a"]), text_request(CLS, ["b"])
        boom.id, fine.id = "boom", "fine"
        answers = {r.infer_response.id: r.error_message async for r in stream(iter([boom, fine]))}
    assert answers == {"boom": "internal error", "fine": ""}


async def test_model_config_leaves_out_versions_that_are_not_numbers(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.api.v2 import protocol

    real = protocol.config_of

    def named_versions(m: Any) -> dict[str, Any]:
        return {**real(m), "version_policy": {"specific": {"versions": ["1", "canary"]}}}

    monkeypatch.setattr(protocol, "config_of", named_versions)
    async with grpc_of(make_client) as (_, ch):
        got = await rpc(ch, "ModelConfig", pb.ModelConfigResponse)(pb.ModelConfigRequest(name=LM))
    assert list(got.config.version_policy.specific.versions) == [1]
