"""The Open Inference Protocol v2 over gRPC (`RNNSERVE_GRPC_PORT`; docs/protocols.md, section 2).

`server.py` runs grpcio's asyncio server in the API process; `servicer.py` maps each RPC onto
what HTTP's `/v2` serves; `calls.py` is what every call goes through (keys, timeout, status
codes, metrics, access log, span); `tensors.py` reads a message into v2's request and writes
outputs back; `infer.py` runs inference and generations; `inference.proto` is the protocol,
compiled into `inference_pb2*.py` by `codegen.py`.
"""
