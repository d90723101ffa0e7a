"""The gRPC endpoint of a real `rnnserve` process at `--workers 2`: every API worker serves the
port (SO_REUSEPORT), a sequence goes on across gRPC, HTTP and workers, and a streamed generation
comes through the engine process's wire."""

from __future__ import annotations

import queue
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import tritonclient.grpc as tg

from tests.loopback import free_port
from tests.servers import server_process
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
