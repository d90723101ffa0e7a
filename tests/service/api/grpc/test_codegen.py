"""The committed gRPC modules are what grpcio-tools makes of inference.proto today."""

from __future__ import annotations

from pathlib import Path

from service.api.grpc import codegen


def test_generated_modules_are_up_to_date(tmp_path: Path) -> None:
    for name, text in codegen.generate(tmp_path).items():
        committed = (codegen.HERE / name).read_text()
        assert committed == text, f"{name} is stale: run python -m service.api.grpc.codegen"


def test_messages_live_in_their_own_pool() -> None:
    # Triton's own client registers the same names in the default pool: both import, in any order
    import tritonclient.grpc.service_pb2 as triton

    from service.api.grpc import inference_pb2 as pb

    ours = pb.ModelInferRequest(model_name="m", raw_input_contents=[b"x"])
    ours.parameters["sequence_id"].int64_param = 7
    theirs = triton.ModelInferRequest.FromString(ours.SerializeToString())
    assert theirs.parameters["sequence_id"].int64_param == 7
    assert theirs.raw_input_contents == [b"x"]
