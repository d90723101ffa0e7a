"""Scale-out for real: redis-server + 3 `rnnserve serve` replicas (store=redis) + nginx round-robin,
all on 127.0.0.1 with free ports (tests/deploy/cluster.py).

Proves: a session continues whichever replica takes each request; chunked == whole across
replicas; concurrent requests on one session from different replicas are serialized (none lost,
none doubled); a replica killed with SIGKILL mid-stream loses nothing and the client's retry with
the same Idempotency-Key on another replica advances the state exactly once; Redis down -> 503
`store_unavailable` with Retry-After while stateless predictions keep working; Redis back -> the
same sessions resume.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.sessions.blob import decode_state
from tests.deploy.cluster import Cluster, which

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.timeout(240)]

LM = "tiny-char-lstm"
CLS = "tiny-sentiment-gru"
TEXT = "To be, or not to be: that is the question. Whether tis nobler in the mind to suffer"


@pytest.fixture(scope="module", params=["one redis", "redis cluster"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """Three replicas on one Redis primary, then on a Redis Cluster of 3 primaries with a
    replica each: every test runs on both."""
    if which("redis-server") is None or which("nginx") is None:
        pytest.skip("needs redis-server and nginx (scripts/system-deps.sh installs them)")
    workdir = Path(tmp_path_factory.mktemp("cluster"))
    c = Cluster(workdir, replicas=3, redis_cluster=request.param == "redis cluster")
    c.start()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def client(cluster: Cluster) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cluster.nginx.url, timeout=30) as c:
        yield c


def ok(r: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert r.status_code == status, r.text
    out: dict[str, Any] = r.json()
    return out


def new_session(c: httpx.Client, model: str = LM) -> str:
    sid: str = ok(c.post("/v1/sessions", json={"model": model}), 201)["session_id"]
    return sid


def state_of(c: httpx.Client, sid: str) -> list[np.ndarray]:
    blob = decode_state(base64.b64decode(ok(c.get(f"/v1/sessions/{sid}/state"))["state"]))
    return [*blob.states, *([] if blob.logits is None else [blob.logits])]


def sse(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """(event, data) pairs of a server-sent event stream; `("end", None)` for `data: [DONE]`."""
    event = "message"
    for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            if line == "data: [DONE]":
                yield "end", None
                return
            yield event, json.loads(line[6:])
            event = "message"


def test_session_continues_on_whichever_replica_serves(
    cluster: Cluster, client: httpx.Client
) -> None:
    chunked = new_session(client)
    pieces = [TEXT[i : i + 9] for i in range(0, len(TEXT), 9)]
    served: set[str] = set()
    for i, piece in enumerate(pieces):
        r = client.post(
            f"/v1/sessions/{chunked}/feed",
            json={"text": piece, "top_k": 5, "expected_version": i},
        )
        assert ok(r)["version"] == i + 1
        served.add(r.headers["x-upstream"])
    assert served == {rep.addr for rep in cluster.replicas}  # every replica took a turn
    last = ok(r)["output"]

    whole = new_session(client)
    once = ok(client.post(f"/v1/sessions/{whole}/feed", json={"text": TEXT, "top_k": 5}))
    # chunked == whole: the running output, the state itself, and what it generates next
    assert [t["token"] for t in once["output"]["next"]] == [t["token"] for t in last["next"]]
    np.testing.assert_allclose(
        [t["prob"] for t in once["output"]["next"]], [t["prob"] for t in last["next"]], atol=1e-6
    )
    for a, b in zip(state_of(client, chunked), state_of(client, whole), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    greedy = {"max_tokens": 40, "temperature": 0}
    g1 = ok(client.post(f"/v1/sessions/{chunked}/generate", json=greedy))
    g2 = ok(client.post(f"/v1/sessions/{whole}/generate", json=greedy))
    assert g1["text"] == g2["text"] and len(g1["text"]) > 0
    assert ok(client.get(f"/v1/sessions/{chunked}"))["version"] == len(pieces) + 1


def test_classifier_pending_word_travels_between_replicas(client: httpx.Client) -> None:
    """A word cut in two halves fed to different replicas: the unfinished word is part of the
    shared state, so the result equals a one-shot prediction on the whole text."""
    text = "what a wonderful and moving film, truly great acting"
    sid = new_session(client, CLS)
    cut = [text[:13], text[13:27], text[27:]]  # "...wonder" | "ful and mov" | "ing film..."
    upstreams = set()
    for piece in cut:
        r = client.post(f"/v1/sessions/{sid}/feed", json={"text": piece})
        out = ok(r)
        upstreams.add(r.headers["x-upstream"])
    assert len(upstreams) >= 2
    one_shot = ok(client.post(f"/v1/models/{CLS}/predict", json={"inputs": [text]}))["outputs"][0]
    assert out["output"]["label"] == one_shot["label"]
    for label, p in one_shot["probs"].items():
        assert out["output"]["probs"][label] == pytest.approx(p, abs=1e-6)


def test_concurrent_requests_on_one_session_are_serialized_across_replicas(
    cluster: Cluster,
) -> None:
    n = 12
    with httpx.Client(base_url=cluster.nginx.url, timeout=30) as c:
        sid = new_session(c)

    def feed(_: int) -> tuple[int, str]:
        with httpx.Client(base_url=cluster.nginx.url, timeout=60) as c:
            r = c.post(f"/v1/sessions/{sid}/feed", json={"text": "ab "})
            return ok(r)["version"], r.headers["x-upstream"]

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(feed, range(n)))
    assert sorted(v for v, _ in results) == list(range(1, n + 1))  # none lost, none doubled
    assert len({u for _, u in results}) == 3
    with httpx.Client(base_url=cluster.nginx.url, timeout=30) as c:
        info = ok(c.get(f"/v1/sessions/{sid}"))
        assert (info["version"], info["tokens_seen"]) == (n, 3 * n)
        serial = new_session(c)
        ok(c.post(f"/v1/sessions/{serial}/feed", json={"text": "ab " * n}))
        for a, b in zip(state_of(c, sid), state_of(c, serial), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)


def test_kill_9_mid_stream_then_retry_advances_state_exactly_once(
    cluster: Cluster, client: httpx.Client
) -> None:
    sid = new_session(client)
    ok(client.post(f"/v1/sessions/{sid}/feed", json={"text": "Once upon a time"}))
    before = ok(client.get(f"/v1/sessions/{sid}"))
    assert before["version"] == 1
    key = f"retry-{uuid.uuid4().hex}"
    # as long as the server allows: the engine runs ahead of the client, so a short generation
    # could be finished (and committed) before the kill lands
    n = 4096
    body = {"max_tokens": n, "temperature": 0.8, "seed": 7, "stream": True}
    headers = {"Idempotency-Key": key}

    # 1. the stream starts on some replica; after a few tokens that replica is killed -9
    tokens, victim = 0, None
    with (
        pytest.raises(httpx.HTTPError),  # the stream breaks: no `done`, no [DONE]
        client.stream("POST", f"/v1/sessions/{sid}/generate", json=body, headers=headers) as r,
    ):
        assert r.status_code == 200
        victim = cluster.replica_at(r.headers["x-upstream"])
        for event, _ in sse(r.iter_lines()):
            assert event == "token"
            tokens += 1
            if tokens == 3:
                victim.kill9()
    assert victim is not None and tokens >= 3
    # nothing was committed: the dead replica never finished
    assert ok(client.get(f"/v1/sessions/{sid}"))["version"] == 1

    # 2. the client's retry, same key and body, lands on a live replica and completes
    t0 = time.monotonic()
    with client.stream("POST", f"/v1/sessions/{sid}/generate", json=body, headers=headers) as r:
        assert r.status_code == 200
        assert r.headers["x-upstream"] != victim.addr
        events = list(sse(r.iter_lines()))
    waited = time.monotonic() - t0
    assert events[-1] == ("end", None)
    done = events[-2][1]
    assert events[-2][0] == "done" and done["replayed"] is False and done["version"] == 2
    text = "".join(d["text"] for e, d in events if e == "token")
    assert text == done["text"] and done["usage"]["completion_tokens"] == n
    assert waited < 30  # at most one lease (5 s) of the dead holder plus the generation

    # 3. a second retry replays the stored result; the state advanced exactly once
    with client.stream("POST", f"/v1/sessions/{sid}/generate", json=body, headers=headers) as r:
        replay = list(sse(r.iter_lines()))
    assert replay[-2][0] == "done"
    assert replay[-2][1]["replayed"] is True and replay[-2][1]["text"] == text
    after = ok(client.get(f"/v1/sessions/{sid}"))
    assert after["version"] == 2
    assert after["tokens_seen"] == before["tokens_seen"] + n

    # the killed replica comes back and serves the same session (cluster whole for what follows)
    victim.start()
    for _ in range(600):
        try:
            if victim.ready():
                break
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    with httpx.Client(base_url=f"http://{victim.addr}", timeout=30) as direct:
        assert ok(direct.get(f"/v1/sessions/{sid}"))["version"] == 2
    deadline = time.monotonic() + 15  # nginx takes it back after its fail_timeout (2 s)
    while client.get("/healthz").headers["x-upstream"] != victim.addr:
        assert time.monotonic() < deadline, "nginx never routed to the restarted replica"
        time.sleep(0.1)


def test_redis_down_is_503_with_retry_after_then_sessions_resume(
    cluster: Cluster, client: httpx.Client
) -> None:
    sid = new_session(client)
    ok(client.post(f"/v1/sessions/{sid}/feed", json={"text": "Before the outage"}))
    cluster.redis.stop()
    try:
        for _ in range(3):  # whichever replica answers
            for r in (
                client.post(f"/v1/sessions/{sid}/feed", json={"text": " more"}),
                client.get(f"/v1/sessions/{sid}"),
                client.post("/v1/sessions", json={"model": LM}),
            ):
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "store_unavailable"
                assert int(r.headers["retry-after"]) >= 1
            # stateless predictions do not need the store
            ok(client.post(f"/v1/models/{CLS}/predict", json={"inputs": ["good"]}))
            assert client.get("/readyz").status_code == 200
    finally:
        cluster.redis.start()
    # recovery is automatic: the first requests after Redis is back succeed on every replica
    served = set()
    for i in range(6):
        r = client.post(f"/v1/sessions/{sid}/feed", json={"text": " after"})
        assert ok(r)["version"] == 2 + i
        served.add(r.headers["x-upstream"])
    assert len(served) == 3
