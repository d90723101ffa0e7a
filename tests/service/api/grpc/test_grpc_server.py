"""The gRPC endpoint of a real `rnnserve` process at `--workers 2`: every API worker serves the
port (SO_REUSEPORT), a sequence goes on across gRPC, HTTP and workers, and a streamed generation
comes through the engine process's wire."""

from __future__ import annotations

import asyncio
import queue
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import tritonclient.grpc as tg

from service.api.grpc import inference_pb2 as pb
from tests.loopback import free_port
from tests.servers import server_process
from tests.service.api.grpc.test_calls import text_request
from tests.service.conftest import LM


def text(t: str) -> tg.InferInput:
    inp = tg.InferInput("TEXT", [1], "BYTES")
    inp.set_data_from_numpy(np.array([t.encode()], dtype=object))
    return inp


def test_workers_serve_grpc(tmp_path: Path) -> None:
    port = free_port()
    with server_process(tmp_path, workers=2, grpc_port=str(port)) as server:
        # one client per connection: the kernel spreads connections over the workers
        clients = [tg.InferenceServerClient(f"127.0.0.1:{port}") for _ in range(4)]
        try:
            assert all(c.is_server_ready() for c in clients)
            chunks = ["To be", ", or not", " to be"]
            for i, chunk in enumerate(chunks):
                clients[i].infer(LM, [text(chunk)], sequence_id="w2", sequence_start=i == 0)
            r = httpx.post(f"{server.base}/v1/sessions/w2/feed", json={"text": ": that"})
            assert r.status_code == 200 and r.json()["version"] == 4
            last = clients[3].infer(LM, [text(" is")], sequence_id="w2", sequence_end=True)
            whole = clients[0].infer(LM, [text("To be, or not to be: that is")])
            np.testing.assert_allclose(last.as_numpy("PROBS"), whole.as_numpy("PROBS"), atol=1e-5)

            got: queue.Queue[tuple[Any, Any]] = queue.Queue()
            clients[1].start_stream(callback=lambda result, error: got.put((result, error)))
            clients[1].async_stream_infer(
                LM, [text("ROMEO:")], parameters={"max_tokens": 8, "temperature": 0.0}
            )
            pieces = []
            while True:
                res, err = got.get(timeout=30)
                assert err is None, err
                if res.get_response().parameters["triton_final_response"].bool_param:
                    break
                pieces.append(res.as_numpy("TEXT")[0].decode())
            clients[1].stop_stream()
            native = httpx.post(
                f"{server.base}/v1/models/{LM}/generate",
                json={"prompt": "ROMEO:", "max_tokens": 8, "temperature": 0.0},
            ).json()
            assert "".join(pieces) == native["text"]
        finally:
            for c in clients:
                c.close()
        assert f"grpc on port {port}" in server.log.read_text()


def test_a_client_that_stops_reading_gets_its_slots_taken_back(tmp_path: Path) -> None:
    """Generations on a stream whose client reads nothing end once their backlog passes
    `RNNSERVE_STREAM_BUFFER_BYTES` (as over HTTP): the stream slots come back, and each
    request's end waits on the stream as an error naming why."""
    port = free_port()
    settings = {"grpc_port": str(port), "send_timeout_s": "1", "max_tokens_limit": "100000"}
    with server_process(tmp_path, workers=0, **settings) as server:
        asyncio.run(_stop_reading(server.base, port))


async def _stop_reading(base: str, port: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stream = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )()
        for i in range(8):
            gen = text_request(LM, ["a"])
            gen.id = str(i)
            gen.parameters["max_tokens"].int64_param = 50_000
            await stream.write(gen)
        async with httpx.AsyncClient(base_url=base) as http:
            deadline = time.monotonic() + 60
            while (await http.get("/v1/load")).json()["open_streams"]:
                assert time.monotonic() < deadline, "the stream slots were not freed"
                await asyncio.sleep(0.1)
        ended: dict[str, str] = {}
        while len(ended) < 8:  # what the client had not read is still there, then the ends
            msg = await asyncio.wait_for(stream.read(), 30)
            assert msg is not grpc.aio.EOF
            if msg.error_message:
                ended[msg.infer_response.id] = msg.error_message
        assert set(ended) == {str(i) for i in range(8)}
        assert all("RNNSERVE_STREAM_BUFFER_BYTES" in m for m in ended.values()), ended
        await stream.done_writing()
