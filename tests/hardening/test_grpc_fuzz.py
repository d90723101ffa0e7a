"""A fuzz of the v2 gRPC messages (bad shapes, datatypes, sizes, parameters, raw bytes that are
not protobuf, streams of them): every call answers a status code, a stream an error message per
request, and the API process keeps serving. Never INTERNAL for a client's mistake."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.api.grpc import calls
from service.api.grpc import inference_pb2 as pb
from tests.service.conftest import ALL_MODELS, ClientFactory, app_of

DATATYPES = ["BYTES", "INT64", "FP32", "FP16", "BF16", "BOOL", "UINT8", "INT8", "", "int64"]
NAMES = ["TEXT", "TOKEN_IDS", "PROBS", "", "X" * 300]
# what a client's mistake may get; INTERNAL and UNKNOWN mean the server failed
CLIENT_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}

params = st.dictionaries(
    st.sampled_from(
        [
            "sequence_id",
            "sequence_start",
            "sequence_end",
            "max_tokens",
            "temperature",
            "stop",
            "binary_data_output",
            "priority",
            "timeout",
            "classification",
            "x",
        ]
    ),
    st.one_of(
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=True),
        st.text(max_size=70),
    ),
    max_size=4,
)


@st.composite
def requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(
        model_name=draw(st.sampled_from([*ALL_MODELS, "nope", "", "a@1"])),
        model_version=draw(st.sampled_from(["", "1", "9", "x"])),
    )
    for k, v in draw(params).items():
        p = msg.parameters[k]
        if isinstance(v, bool):
            p.bool_param = v
        elif isinstance(v, int):
            p.int64_param = v
        elif isinstance(v, float):
            p.double_param = v
        else:
            p.string_param = v
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 3))):
        t = msg.inputs.add(
            name=draw(st.sampled_from(NAMES)),
            datatype=draw(st.sampled_from(DATATYPES)),
            shape=draw(st.lists(st.integers(-2, 2**40), max_size=4)),
        )
        if raw:
            msg.raw_input_contents.append(draw(st.binary(max_size=64)))
        elif draw(st.booleans()):
            t.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=8), max_size=3)))
            t.contents.int64_contents.extend(draw(st.lists(st.integers(-5, 100), max_size=3)))
    for name in draw(st.lists(st.sampled_from(NAMES), max_size=2)):
        msg.outputs.add(name=name)
    return msg


def stub(channel: grpc.aio.Channel, method: str, stream: bool = False) -> object:
    make = channel.stream_stream if stream else channel.unary_unary
    return make(
        f"/{calls.SERVICE}/{method}",
        request_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
        response_deserializer=(
            pb.ModelStreamInferResponse if stream else pb.ModelInferResponse
        ).FromString,
    )


@pytest.fixture
async def channel(make_client: ClientFactory) -> AsyncIterator[grpc.aio.Channel]:
    async with make_client(grpc_port=0, max_body_bytes=1 << 16) as http:
        port = app_of(http).state.grpc_port
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            yield ch


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(msgs=st.lists(requests(), min_size=1, max_size=4))
async def test_fuzzed_requests_get_status_codes(
    channel: grpc.aio.Channel, msgs: list[pb.ModelInferRequest]
) -> None:
    infer = stub(channel, "ModelInfer")
    for msg in msgs:
        try:
            await infer(msg)  # type: ignore[operator]
        except grpc.aio.AioRpcError as e:
            assert e.code() in CLIENT_CODES, (e.code(), e.details(), msg)
    # the same requests on one stream: one answer each, errors as messages
    call = stub(channel, "ModelStreamInfer", stream=True)(iter(msgs))  # type: ignore[operator]
    answers = [r async for r in call]
    assert len(answers) >= len(msgs)  # (a generation answers a token per response)
    for r in answers:
        assert "internal error" not in r.error_message


async def test_hostile_bytes_and_sizes(channel: grpc.aio.Channel) -> None:
    infer = stub(channel, "ModelInfer")
    for junk in (b"\xff" * 50, b"\x0a\xff\xff\xff\xff\x0f", b"\x2a" + b"\x80" * 20):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await infer(junk)  # type: ignore[operator]
        # bytes that are not the message: the client's mistake, named
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid inference.ModelInferRequest" in str(e.value.details())
    huge = pb.ModelInferRequest(model_name=ALL_MODELS[0], raw_input_contents=[b"\0" * (1 << 17)])
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await infer(huge)  # type: ignore[operator]
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # a shape with 2**40 elements described in a few bytes is refused, not allocated
    big = pb.ModelInferRequest(model_name=ALL_MODELS[0])
    big.inputs.add(name="TOKEN_IDS", datatype="INT64", shape=[1 << 20, 1 << 20])
    big.raw_input_contents.append(b"\0" * 8)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await infer(big)  # type: ignore[operator]
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    live = channel.unary_unary(
        f"/{calls.SERVICE}/ServerLive",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=pb.ServerLiveResponse.FromString,
    )
    assert (await live(pb.ServerLiveRequest())).live
