"""`python -m service.api.grpc.codegen`: compile `inference.proto` with grpcio-tools into the
modules beside it (`inference_pb2.py`, its `.pyi`, `inference_pb2_grpc.py`).

The generated modules are committed, so the serving image needs only `grpcio` and `protobuf`
at run time; `tests/service/api/grpc/test_codegen.py` regenerates them and fails if they differ.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
OUTPUTS = ("inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py")


def generate(out: Path) -> dict[str, str]:
    """Compile the proto into `out`; each generated module's text by its name."""
    from grpc_tools import protoc  # a build tool: not a run-time dependency

    args = [
        "grpc_tools.protoc",
        f"-I{HERE}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        str(HERE / "inference.proto"),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on inference.proto")
    texts = {}
    for name in OUTPUTS:
        text = (out / name).read_text()
        # the stubs import their messages as a top-level module; they live in this package
        texts[name] = text.replace(
            "import inference_pb2 as inference__pb2",
            "from service.api.grpc import inference_pb2 as inference__pb2",
        ).replace(
            # a pool of its own: Triton's clients register these same message names
            # (`inference.ModelInferRequest`, ...) in the default pool, and a process that
            # holds both (a test; an app that calls another server) would fail to import
            "_descriptor_pool.Default().AddSerializedFile(",
            "_descriptor_pool.DescriptorPool().AddSerializedFile(",
        )
    return texts


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in generate(Path(tmp)).items():
            (HERE / name).write_text(text)
            print(f"wrote {HERE / name}", file=sys.stderr)


if __name__ == "__main__":
    main()
