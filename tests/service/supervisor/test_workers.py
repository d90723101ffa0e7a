"""`rnnserve serve --workers 2`, for real: a supervisor, one engine process and two API worker
processes on one port (fixture models), driven over HTTP, SSE, WebSocket and v2.

What the process split must keep: any worker serves any session and chunked == whole across
them; seeded generation gives the in-process text; /metrics sums every process once; a worker
killed with SIGKILL is replaced while the other serves, and the session its stream held is free
and not advanced. How the server ends (signals, the engine dying): test_supervisor.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.sync.client import connect

from tests.conftest import LONG
from tests.servers import ServerProcess as Cluster
from tests.servers import start, stop
from tests.service.conftest import CLS, LM
from tests.service.supervisor.conftest import CLUSTER


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = start(tmp_path_factory.mktemp("workers"), workers=2, **CLUSTER)
    try:
        yield c
    finally:
        stop(c)


def _fresh(c: Cluster) -> httpx.Client:
    """A new connection each time: the kernel hands connections to either worker."""
    return httpx.Client(base_url=c.base, timeout=30, headers={"Connection": "close"})


def test_chunked_feeding_across_workers_equals_one_shot(cluster: Cluster) -> None:
    text = "To be, or not to be, that is the question: whether 'tis nobler in the mind"
    with _fresh(cluster) as h:
        sid = h.post("/v1/sessions", json={"model": LM}).json()["session_id"]
    pieces = [text[i : i + 7] for i in range(0, len(text), 7)]
    for i, piece in enumerate(pieces):
        with _fresh(cluster) as h:  # each chunk may land on the other worker
            r = h.post(f"/v1/sessions/{sid}/feed", json={"text": piece, "top_k": 65})
            assert r.status_code == 200 and r.json()["version"] == i + 1, r.text
    chunked = {p["token"]: p["prob"] for p in r.json()["output"]["next"]}
    with _fresh(cluster) as h:
        whole = h.post(f"/v1/models/{LM}/predict", json={"inputs": [text], "top_k": 65}).json()
    one = {p["token"]: p["prob"] for p in whole["outputs"][0]["next"]}
    assert chunked.keys() == one.keys()
    assert max(abs(chunked[k] - one[k]) for k in one) <= 1e-5


def test_concurrent_feeds_on_one_session_are_serialized_across_workers(cluster: Cluster) -> None:
    import concurrent.futures as cf

    with _fresh(cluster) as h:
        sid = h.post("/v1/sessions", json={"model": CLS}).json()["session_id"]

    def feed(i: int) -> int:
        with _fresh(cluster) as h:
            r = h.post(f"/v1/sessions/{sid}/feed", json={"text": f"word{i} "})
            assert r.status_code == 200, r.text
            return int(r.json()["version"])

    with cf.ThreadPoolExecutor(8) as pool:
        versions = sorted(pool.map(feed, range(16)))
    assert versions == list(range(1, 17))  # each applied once, none lost
    with _fresh(cluster) as h:
        assert h.get(f"/v1/sessions/{sid}").json()["tokens_seen"] == 16


def test_seeded_generation_streams_and_websockets_through_workers(cluster: Cluster) -> None:
    body = {"prompt": "ROMEO:", "max_tokens": 40, "seed": 7}
    with _fresh(cluster) as h:
        whole = h.post(f"/v1/models/{LM}/generate", json=body).json()
        assert whole["text"] == "\n\nTIRIUS:\n'ss. Sond sandet horv lell we "  # as in docs/api.md
        with h.stream("POST", f"/v1/models/{LM}/generate", json={**body, "stream": True}) as r:
            events = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    done = json.loads(events[-2].removeprefix("data: "))
    assert done["text"] == whole["text"] and done["usage"] == whole["usage"]
    with _fresh(cluster) as h:
        sid = h.post("/v1/sessions", json={"model": LM}).json()["session_id"]
    addr = cluster.base.removeprefix("http://")
    with connect(f"ws://{addr}/v1/sessions/{sid}/ws") as ws:
        ws.send(json.dumps({"type": "feed", "text": "ROMEO:", "id": 1}))
        assert json.loads(ws.recv())["version"] == 1
        ws.send(json.dumps({"type": "generate", "max_tokens": 40, "seed": 7, "id": 2}))
        while (msg := json.loads(ws.recv()))["type"] == "token":
            pass
    assert msg["type"] == "done" and msg["version"] == 2
    assert msg["text"] == whole["text"]  # the session's state after "ROMEO:" = a fresh prompt


def test_v2_sequences_are_sessions_in_the_engine(cluster: Cluster) -> None:
    import tritonclient.http as tc

    client = tc.InferenceServerClient(cluster.base.removeprefix("http://"))

    def step(text: str, **flags: bool) -> np.ndarray:
        inp = tc.InferInput("TEXT", [1], "BYTES")
        inp.set_data_from_numpy(np.array([text.encode()], dtype=object))
        res = client.infer(CLS, [inp], sequence_id=4242, **flags)
        probs: np.ndarray = res.as_numpy("PROBS")
        return probs

    step("a wonderful, ", sequence_start=True)
    with _fresh(cluster) as h:  # the same state, seen as a native session by either worker
        assert h.get("/v1/sessions/4242").json()["version"] == 1
    last = step("moving film", sequence_end=True)
    inp = tc.InferInput("TEXT", [1], "BYTES")
    inp.set_data_from_numpy(np.array([b"a wonderful, moving film"], dtype=object))
    whole = client.infer(CLS, [inp]).as_numpy("PROBS")
    np.testing.assert_allclose(last, whole, atol=1e-5)


def test_processes_carry_their_role_in_the_kernel_name(cluster: Cluster) -> None:
    """`ps`/`top` (and bench/workers.py's CPU split) tell the engine from the workers."""

    def comm(pid: int) -> str:
        return Path(f"/proc/{pid}/comm").read_text().strip()

    engine = next(int(str(r["pid"])) for r in cluster.lines() if r.get("msg") == "engine ready")
    assert comm(engine) == "rnnserve-engine"
    workers = cluster.worker_pids()
    assert len(workers) == 2 and {comm(p) for p in workers} == {"rnnserve-worker"}


def _count(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_sum_every_process_once(cluster: Cluster) -> None:
    route = "/v1/models/{model}/predict"
    with _fresh(cluster) as h:
        before = h.get("/metrics").text
    n = 12
    for _ in range(n):
        with _fresh(cluster) as h:
            assert h.post(f"/v1/models/{CLS}/predict", json={"inputs": ["fine"]}).status_code == 200
    with _fresh(cluster) as h:
        tokens_before = _count(h.get("/metrics").text, "rnnserve_generated_tokens_total", model=LM)
        h.post(f"/v1/models/{LM}/generate", json={"prompt": "a", "max_tokens": 9, "seed": 1})
        after = h.get("/metrics").text
    got = _count(after, "rnnserve_requests_total", route=route, status="200") - _count(
        before, "rnnserve_requests_total", route=route, status="200"
    )
    assert got == n  # requests come from the workers: each counted once, whichever served it
    tokens = _count(after, "rnnserve_generated_tokens_total", model=LM) - tokens_before
    assert tokens == 9  # generation is the engine's figure
    assert _count(after, "rnnserve_model_info", model=LM) == 1


def test_a_killed_worker_is_replaced_and_frees_what_its_stream_held(cluster: Cluster) -> None:
    with _fresh(cluster) as h:
        sid = h.post("/v1/sessions", json={"model": LM}).json()["session_id"]
        h.post(f"/v1/sessions/{sid}/feed", json={"text": "ROMEO:"})
    before = set(cluster.worker_pids())
    assert len(before) == 2
    # a long generation on the session, then its worker is killed (both, one after the other,
    # so whichever held the stream dies; between the two kills the other one serves)
    stream = httpx.Client(base_url=cluster.base, timeout=30)
    cm = stream.stream(
        "POST", f"/v1/sessions/{sid}/generate", json={"max_tokens": LONG, "stream": True}
    )
    r = cm.__enter__()
    lines = r.iter_lines()
    assert next(lines).startswith("event: token")
    broken = False
    for pid in sorted(before):
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:  # replaced, and the server answers meanwhile
            with _fresh(cluster) as h:
                try:
                    ok = h.get("/readyz").status_code == 200
                except httpx.TransportError:
                    ok = False
            pids = cluster.worker_pids()
            if ok and len(pids) == 2 and pid not in pids:
                break
            assert time.monotonic() < deadline, "the worker was not replaced"
            time.sleep(0.1)
        try:
            for _ in range(100_000):
                next(lines)
        except (httpx.HTTPError, StopIteration):
            broken = True
        if broken:
            break
    with contextlib.suppress(Exception):
        cm.__exit__(None, None, None)
    stream.close()
    assert broken
    assert not (cluster.worker_pids() & before) or len(cluster.worker_pids()) == 2
    # the engine cancelled the dead worker's stream: lock free, nothing committed
    with _fresh(cluster) as h:
        t0 = time.monotonic()
        r2 = h.post(f"/v1/sessions/{sid}/feed", json={"text": " x"})
        assert r2.status_code == 200 and r2.json()["version"] == 2, r2.text
        assert time.monotonic() - t0 < 5


def _kill_every_worker(c: Cluster) -> None:
    """SIGKILL each worker in turn, each time waiting for its replacement."""
    for pid in sorted(c.worker_pids()):
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while pid in c.worker_pids() or len(c.worker_pids()) < 2:
            assert time.monotonic() < deadline, "the worker was not replaced"
            time.sleep(0.1)
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(httpx.TransportError), _fresh(c) as h:
            if h.get("/readyz").status_code == 200:
                return
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_stream_caps_count_every_workers_streams(tmp_path: Path) -> None:
    """RNNSERVE_MAX_OPEN_STREAMS and RNNSERVE_MAX_STREAMS_PER_KEY hold for the server, not per
    worker (each worker counting its own admitted up to N x each cap), and the slots of a
    worker killed with SIGKILL come back."""
    keys = {n: f"{n}-key-0123456789abcdef" for n in ("alice", "bob", "carol")}
    c = start(
        tmp_path,
        workers=2,
        **CLUSTER,
        api_keys=",".join(f"{n}:{k}" for n, k in keys.items()),
        max_open_streams="5",
        max_streams_per_key="3",
    )
    addr = c.base.removeprefix("http://")
    sids: dict[str, str] = {}
    for name, key in keys.items():
        with _fresh(c) as h:
            r = h.post("/v1/sessions", json={"model": LM}, headers=_bearer(key))
            sids[name] = r.json()["session_id"]

    def refused(name: str) -> tuple[int, str]:
        with _fresh(c) as h:
            r = h.post(
                f"/v1/sessions/{sids[name]}/generate",
                json={"max_tokens": 3},
                headers=_bearer(keys[name]),
            )
            return r.status_code, r.json()["error"]["code"] if r.status_code != 200 else ""

    def hold(stack: contextlib.ExitStack, name: str) -> Any:
        """A WebSocket connection: a stream slot from connect to close (each on a new TCP
        connection, so the kernel spreads them over both workers)."""
        url = f"ws://{addr}/v1/sessions/{sids[name]}/ws"
        ws = stack.enter_context(connect(url, additional_headers=_bearer(keys[name])))
        ws.send(json.dumps({"type": "reset"}))
        assert json.loads(ws.recv())["type"] == "result"  # served: the slot is taken
        return ws

    try:
        with contextlib.ExitStack() as first:
            for _ in range(3):
                hold(first, "alice")
            # per worker, alice has 1-2 streams on each: a worker counting alone would admit
            assert {refused("alice") for _ in range(6)} == {(429, "stream_limit")}
            last = [hold(first, "bob") for _ in range(2)][-1]
            assert {refused("carol") for _ in range(6)} == {(503, "overloaded")}
            with _fresh(c) as h:  # not a stream: served
                r = h.post(
                    f"/v1/models/{CLS}/predict",
                    json={"inputs": ["ok"]},
                    headers=_bearer(keys["carol"]),
                )
                assert r.status_code == 200
            last.close()  # a slot back: carol's JSON generate is served
            deadline = time.monotonic() + 10
            while refused("carol")[0] != 200:
                assert time.monotonic() < deadline, "a closed stream's slot did not come back"
                time.sleep(0.05)
            # every worker killed with its streams open: the engine frees their slots
            _kill_every_worker(c)
            with contextlib.ExitStack() as second:
                for name in ("alice", "alice", "alice", "bob", "bob"):
                    hold(second, name)
                assert refused("carol") == (503, "overloaded")
    finally:
        stop(c)


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
