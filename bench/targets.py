"""The servers under test and the requests each one gets for the same work.

A target is a server (rnnserve, the FastAPI floor, or a peer in its own venv) plus, per
workload, the pre-built requests wrk replays. Peers have no server-held state, so their step
requests carry the state (h, c) and their responses return the new one; the client replays a
fixed, realistic state (the server's work — decode, compute, encode — is the same either way).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import venvs
from bench.loadgen import Req
from bench.procs import Server, free_port

REPO = Path(__file__).resolve().parents[1]
PEERS = REPO / "bench" / "peers"
OUT = REPO / "bench" / ".out"
JSON = {"Content-Type": "application/json"}


@dataclass
class Models:
    root: Path  # a models folder for rnnserve
    char_dir: Path
    cls_dir: Path
    char_name: str
    cls_name: str


def _env(m: Models) -> dict[str, str]:
    return {
        "BENCH_CHAR_MODEL": str(m.char_dir),
        "BENCH_CLS_MODEL": str(m.cls_dir),
        "BENCH_PEERS_DIR": str(PEERS),
        "PYTHONUNBUFFERED": "1",
    }


# -- servers ---------------------------------------------------------------------------------


def rnnserve(m: Models, name: str = "rnnserve", **settings: str) -> Server:
    """rnnserve on `m`'s models and a free port; `settings`: more `RNNSERVE_*` variables
    (`workers="2"` is `RNNSERVE_WORKERS=2`). `name` names it and its log."""
    port = free_port()
    env = {
        "RNNSERVE_MODELS_DIR": str(m.root),
        "RNNSERVE_PORT": str(port),
        "RNNSERVE_HOST": "127.0.0.1",
        "RNNSERVE_LOG_LEVEL": "warning",
        **{f"RNNSERVE_{k.upper()}": v for k, v in settings.items()},
    }
    return Server(
        name,
        [sys.executable, "-c", "from service.server import serve; serve()"],
        f"http://127.0.0.1:{port}/readyz",
        f"http://127.0.0.1:{port}",
        env,
        cwd=REPO,
        log=OUT / "logs" / f"{name}.log",
    )


def floor(m: Models) -> Server:
    port = free_port()
    return Server(
        "floor",
        [sys.executable, str(PEERS / "floor.py"), str(port)],
        f"http://127.0.0.1:{port}/ready",
        f"http://127.0.0.1:{port}",
        _env(m),
        log=OUT / "logs" / "floor.log",
    )


def pytriton(m: Models) -> Server:
    http, grpc, metrics = free_port(), free_port(), free_port()
    env = _env(m) | {"LD_LIBRARY_PATH": str(sysconfig.get_config_var("LIBDIR"))}
    py = str(venvs.python("pytriton"))
    return Server(
        "pytriton",
        [py, str(PEERS / "pytriton_server.py"), str(http), str(grpc), str(metrics)],
        f"http://127.0.0.1:{http}/v2/models/classify/ready",
        f"http://127.0.0.1:{http}",
        env,
        log=OUT / "logs" / "pytriton.log",
    )


def torchserve(m: Models) -> Server:
    bin_dir = venvs.python("torchserve").parent
    root = OUT / "torchserve"
    store = root / "store"
    if store.exists():
        shutil.rmtree(store)
    store.mkdir(parents=True)
    env = _env(m) | {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    for name in ("step", "classify"):
        subprocess.run(
            [
                str(bin_dir / "torch-model-archiver"),
                "--model-name",
                name,
                "--version",
                "1.0",
                "--handler",
                str(PEERS / "torchserve_handler.py"),
                "--export-path",
                str(store),
                "--archive-format",
                "no-archive",
                "--force",
            ],
            check=True,
            env={**os.environ, **env},
            capture_output=True,
        )
    inf, mgmt, met = free_port(), free_port(), free_port()
    models = {
        n: {
            "1.0": {
                "defaultVersion": True,
                "marName": n,
                "minWorkers": 1,
                "maxWorkers": 1,
                "batchSize": 32,
                "maxBatchDelay": 1,
                "responseTimeout": 60,
            }
        }
        for n in ("step", "classify")
    }
    cfg = root / "config.properties"
    cfg.write_text(
        f"inference_address=http://127.0.0.1:{inf}\nmanagement_address=http://127.0.0.1:{mgmt}\n"
        f"metrics_address=http://127.0.0.1:{met}\ndisable_token_authorization=true\n"
        f"enable_envvars_config=false\ndefault_workers_per_model=1\n"
        f"model_store={store}\nload_models=step,classify\nmodels={json.dumps(models)}\n"
        "async_logging=true\n"
    )
    argv = [
        str(bin_dir / "torchserve"),
        "--start",
        "--foreground",
        "--ncs",
        "--model-store",
        str(store),
        "--ts-config",
        str(cfg),
        "--disable-token-auth",
    ]
    return Server(
        "torchserve",
        argv,
        f"http://127.0.0.1:{inf}/ping",
        f"http://127.0.0.1:{inf}",
        env,
        cwd=root,
        log=OUT / "logs" / "torchserve.log",
    )


def mlserver(m: Models) -> Server:
    root = OUT / "mlserver"
    http, grpc, met = free_port(), free_port(), free_port()
    for name, impl in (("step", "StepRuntime"), ("classify", "ClassifyRuntime")):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "model-settings.json").write_text(
            json.dumps({"name": name, "implementation": f"mlserver_runtime.{impl}"})
        )
    (root / "settings.json").write_text(
        json.dumps(
            {
                "host": "127.0.0.1",
                "http_port": http,
                "grpc_port": grpc,
                "metrics_port": met,
                "debug": False,
            }
        )
    )
    env = _env(m) | {"PYTHONPATH": str(PEERS)}
    argv = [str(venvs.python("mlserver").parent / "mlserver"), "start", str(root)]
    return Server(
        "mlserver",
        argv,
        f"http://127.0.0.1:{http}/v2/health/ready",
        f"http://127.0.0.1:{http}",
        env,
        cwd=root,
        log=OUT / "logs" / "mlserver.log",
    )


def bentoml(m: Models) -> Server:
    port = free_port()
    argv = [
        str(venvs.python("bentoml").parent / "bentoml"),
        "serve",
        "bentoml_service:Peer",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    env = _env(m) | {"BENTOML_DO_NOT_TRACK": "true", "BENTOML_HOME": str(OUT / "bentoml-home")}
    return Server(
        "bentoml",
        argv,
        f"http://127.0.0.1:{port}/readyz",
        f"http://127.0.0.1:{port}",
        env,
        cwd=PEERS,
        log=OUT / "logs" / "bentoml.log",
    )


SERVERS: dict[str, Callable[[Models], Server]] = {
    "rnnserve": rnnserve,
    "floor": floor,
    "pytriton": pytriton,
    "torchserve": torchserve,
    "mlserver": mlserver,
    "bentoml": bentoml,
}
# a client-side target -> the server it talks to
TARGETS: dict[str, str] = {
    "rnnserve": "rnnserve",
    "floor": "floor",
    "pytriton-bin": "pytriton",
    "pytriton-json": "pytriton",
    "torchserve": "torchserve",
    "mlserver": "mlserver",
    "bentoml": "bentoml",
}
PEER_VENV = {
    "pytriton": "pytriton",
    "torchserve": "torchserve",
    "mlserver": "mlserver",
    "bentoml": "bentoml",
}

# -- requests --------------------------------------------------------------------------------

STEP_TEXT = "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer"


def _post(base: str, path: str, body: dict[str, object]) -> dict[str, object]:
    req = urllib.request.Request(base + path, json.dumps(body).encode(), JSON, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return dict(json.loads(r.read()))


def sample_state(m: Models) -> tuple[np.ndarray, np.ndarray]:
    """A realistic (h, c) after some text, each [layers, 1, hidden]."""
    sys.path.insert(0, str(PEERS))
    from common import Model

    lm = Model(m.char_dir)
    ids = lm.tokenizer.encode(STEP_TEXT)
    _, (h, c) = lm.run(
        np.asarray([ids], np.int64), np.asarray([len(ids)], np.int32), lm.init_state(1)
    )
    return h, c


def _v2(name: str, inputs: list[tuple[str, np.ndarray]], outputs: list[str], binary: bool) -> Req:
    import tritonclient.http as th  # project venv (dev extra)

    ins = []
    for n, a in inputs:
        dt = "BYTES" if a.dtype == object else "FP32"
        i = th.InferInput(n, list(a.shape), dt)
        i.set_data_from_numpy(a, binary_data=binary)
        ins.append(i)
    outs = [th.InferRequestedOutput(o, binary_data=binary) for o in outputs]
    body, json_size = th.InferenceServerClient.generate_request_body(ins, outputs=outs)
    headers = dict(JSON)
    if json_size is not None:
        headers = {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(json_size),
        }
    return Req("POST", f"/v2/models/{name}/infer", headers, bytes(body))


def _v2_step(sid: str, text: str, start: bool) -> dict[str, Any]:
    params: dict[str, Any] = {"sequence_id": sid}
    if start:
        params["sequence_start"] = True
    return {
        "parameters": params,
        "inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": [text]}],
        "outputs": [{"name": "PROBS"}],
    }


def step_requests(
    target: str, base: str, m: Models, h: np.ndarray, c: np.ndarray, threads: int, connections: int
) -> list[list[Req]]:
    """One char per request; per wrk thread its own request list."""
    chars = list(dict.fromkeys(STEP_TEXT))[:16]
    if target == "rnnserve":  # one server-held session per connection, fed some text first
        out: list[list[Req]] = []
        for _ in range(threads):
            paths = []
            for _ in range(connections // threads):
                sid = _post(base, "/v1/sessions", {"model": m.char_name})["session_id"]
                _post(base, f"/v1/sessions/{sid}/feed", {"text": STEP_TEXT})
                paths.append(f"/v1/sessions/{sid}/feed")
            out.append(
                [
                    Req("POST", p, JSON, json.dumps({"text": ch}).encode())
                    for ch in chars
                    for p in paths
                ]
            )
        return out
    if target == "rnnserve-v2":  # the same, as v2 sequence steps (what tritonclient sends)
        out = []
        for _ in range(threads):
            seqs = []
            for _ in range(connections // threads):
                sid = f"v2-{uuid.uuid4().hex[:12]}"
                _post(base, f"/v2/models/{m.char_name}/infer", _v2_step(sid, STEP_TEXT, True))
                seqs.append(sid)
            path = f"/v2/models/{m.char_name}/infer"
            out.append(
                [
                    Req("POST", path, JSON, json.dumps(_v2_step(sid, ch, False)).encode())
                    for ch in chars
                    for sid in seqs
                ]
            )
        return out
    hb, cb = h.transpose(1, 0, 2), c.transpose(1, 0, 2)  # batch-first rows for v2 peers
    reqs: list[Req] = []
    for ch in chars:
        if target in ("floor", "torchserve", "bentoml"):
            path = {"floor": "/step", "torchserve": "/predictions/step", "bentoml": "/step"}[target]
            body = {"text": ch, "h": h.tolist(), "c": c.tolist()}
            reqs.append(Req("POST", path, JSON, json.dumps(body).encode()))
        elif target.startswith("pytriton"):
            text = np.array([[ch.encode()]], dtype=object)
            reqs.append(
                _v2(
                    "step",
                    [("text", text), ("h", hb), ("c", cb)],
                    ["logits", "h", "c"],
                    binary=target.endswith("bin"),
                )
            )
        elif target == "mlserver":
            body = {
                "inputs": [
                    {"name": "text", "shape": [1], "datatype": "BYTES", "data": [ch]},
                    {
                        "name": "h",
                        "shape": list(hb.shape),
                        "datatype": "FP32",
                        "data": hb.ravel().tolist(),
                    },
                    {
                        "name": "c",
                        "shape": list(cb.shape),
                        "datatype": "FP32",
                        "data": cb.ravel().tolist(),
                    },
                ]
            }
            reqs.append(Req("POST", "/v2/models/step/infer", JSON, json.dumps(body).encode()))
    return [reqs for _ in range(threads)]


def classify_requests(target: str, m: Models, texts: list[str], threads: int) -> list[list[Req]]:
    reqs: list[Req] = []
    for t in texts:
        if target == "rnnserve":
            reqs.append(
                Req(
                    "POST",
                    f"/v1/models/{m.cls_name}/predict",
                    JSON,
                    json.dumps({"inputs": [t]}).encode(),
                )
            )
        elif target in ("floor", "torchserve", "bentoml"):
            path = {
                "floor": "/classify",
                "torchserve": "/predictions/classify",
                "bentoml": "/classify",
            }[target]
            reqs.append(Req("POST", path, JSON, json.dumps({"inputs": [t]}).encode()))
        elif target.startswith("pytriton"):
            reqs.append(
                _v2(
                    "classify",
                    [("text", np.array([[t.encode()]], dtype=object))],
                    ["probs"],
                    binary=target.endswith("bin"),
                )
            )
        elif target == "mlserver":
            body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [t]}]}
            reqs.append(Req("POST", "/v2/models/classify/infer", JSON, json.dumps(body).encode()))
    per = [reqs[i::threads] for i in range(threads)]
    return per
