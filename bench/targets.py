"""The servers under test: rnnserve, the FastAPI floor, and each peer in its own venv, each started
on a free port and stopped by the benchmark (`procs.Server`). What each is sent for the same
work is `workloads.py`'s."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import venvs
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
