"""`python -m bench.gpu_check`: on a machine with a GPU, in one run of a few minutes, whether the
CUDA path is right and what it does, written to one JSON file.

Checks, per graph variant (each with the difference measured and the tolerance it is held to):
- `provider`: the model's session is on the provider asked for (no silent CPU fallback);
- `io_binding`: decode steps with the state bound on the device (`Runner.run_bound`) == the same
  steps with host arrays (`Runner.run`);
- `device_rows`: rows joining and leaving on the device (`state_place.DeviceState`) == numpy's;
- `chunked_equals_whole`, `padded_equals_alone`: the model contract, on this provider;
- `sessions`: through the whole service in this process: a session fed in chunks answers as one
  request on the whole text, before and after one more character; each feed counts once, and an
  `Idempotency-Key` retry replays without advancing the version.
Measures, per variant:
- `bare`: onnxruntime's decode step alone at each stream count, the state on the host (passed
  to every call) and on the device (bound): steps/s and the tokens/s they bound;
- `streams`: tokens/s with that many open streams through one engine process (its load speaks
  the wire, as bench.engine_load does), and the engine's CPU per token;
- `step`: session steps/s with 32 and 256 clients, and the engine's CPU per step.

    python -m bench.gpu_check            # models/char-lstm (fp32, fp16) on CUDA
    python -m bench.gpu_check --provider cpu --models-dir tests/fixtures/models \\
        --model tiny-char-lstm --streams 32 --step-clients 8 --seconds 0.5   # its test, on CPU

Writes bench/.out/gpu-check-<UTC>.json (or --out); exit status 1 when a check fails, 2 when the
provider is not available at all.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the server sets it, before numpy loads

import httpx
import numpy as np
import onnxruntime as ort

from bench.engine_load import OUT, REPO, Engine, measure
from service.app import create_app
from service.engine.holes import plan
from service.engine.registry import LoadedModel, load_registry
from service.engine.state_place import DeviceState, HostState
from service.settings import Settings

PROVIDERS = {
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "cpu": ["CPUExecutionProvider"],
}
TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n"
    "All:\nSpeak, speak.\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n"
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def tolerance(provider: str, variant: str) -> float:
    """Exact-math ties (chunked == whole, padded == alone) hold to float rounding: 1e-5 on the
    CPU (the project's rule), looser where kernels may change with the batch (cuDNN picks its
    algorithm by shape). A half-precision graph rounds each value to 11 significant bits, so its
    differences are held relative to the value's size: |a - b| / (1 + |b|) <= 1e-2."""
    if variant == "fp16":
        return 1e-2
    return 1e-5 if provider == "cpu" else 1e-4


def _diff(a: list[np.ndarray], b: list[np.ndarray], scaled: bool = False) -> float:
    """The largest |a - b| over the pairs (divided by 1 + |b| when `scaled`)."""
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        d = np.abs(x.astype(np.float64) - y)
        worst = max(worst, float(np.max(d / (1 + np.abs(y)) if scaled else d, initial=0.0)))
    return worst


def _check(diff: float, tol: float, **extra: Any) -> dict[str, Any]:
    return {"ok": bool(diff <= tol), "max_diff": diff, "tol": tol, **extra}


# -- checks on the model's runner ------------------------------------------------------------


def contract_checks(
    m: LoadedModel, tol: float, provider: str, scaled: bool
) -> dict[str, dict[str, Any]]:
    r, man = m.runner, m.manifest
    axes = [s.batch_axis for s in man.io.states]
    ids = np.asarray(m.tokenizer.encode(TEXT), np.int64)
    t = ids.size
    out: dict[str, dict[str, Any]] = {}
    want = PROVIDERS[provider][0]
    out["provider"] = {"ok": r.provider == want, "providers": r.providers, "want": want}

    init = man.init_states(1)
    lw, sw = r.run(ids[None, :], np.array([t], np.int32), init)
    a = t // 3
    _, s1 = r.run(ids[None, :a], np.array([a], np.int32), init)
    l2, s2 = r.run(ids[None, a:], np.array([t - a], np.int32), s1)
    out["chunked_equals_whole"] = _check(_diff([lw, *sw], [l2, *s2], scaled), tol)

    short = 10
    batch = np.zeros((2, t), np.int64)
    batch[0], batch[1, :short] = ids, ids[:short]
    lp, sp = r.run(batch, np.array([t, short], np.int32), man.init_states(2))
    la, sa = r.run(ids[None, :short], np.array([short], np.int32), init)
    row = [lp[1:2], *(np.take(s, [1], axis=ax) for s, ax in zip(sp, axes, strict=True))]
    out["padded_equals_alone"] = _check(_diff(row, [la, *sa], scaled), tol)

    rng = np.random.default_rng(0)
    n, vocab = 64, lw.shape[-1]
    rows = [
        [(0.5 * rng.standard_normal(s.concrete_shape(1))).astype(s.dtype) for s in man.io.states]
        for _ in range(n)
    ]
    host, dev = HostState(axes), DeviceState(r)
    h, d = host.join([], rows), dev.join([], rows)
    step_diff = 0.0
    for _ in range(3):  # chained: the device's outputs are the next step's inputs
        tokens = rng.integers(0, vocab, (n, 1)).astype(np.int64)
        ones = np.ones(n, np.int32)
        lh, h = r.run(tokens, ones, h)
        ld, d = r.run_bound(tokens, ones, d)
        step_diff = max(step_diff, _diff([lh, *h], [ld, *(v.numpy() for v in d)], scaled))
    out["io_binding"] = _check(step_diff, tol, rows=n, device=r.device)

    gone = [1, 4, 7]  # (their rows read before the host's leave() moves rows in place)
    moved = max(_diff(a, b) for a, b in zip(host.rows(h, gone), dev.rows(d, gone), strict=True))
    moves = plan(np.arange(n) % 3 != 1)  # rows leave as the decode batch makes them
    h2, d2 = host.join(host.leave(h, *moves), rows[:5]), dev.join(dev.leave(d, *moves), rows[:5])
    moved = max(moved, _diff(h2, [v.numpy() for v in d2]))
    out["device_rows"] = _check(moved, 0.0)  # copies: exact
    return out


async def session_checks(settings: Settings, model: str, tol: float) -> dict[str, Any]:
    app = create_app(settings, configure_logs=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://check") as c:

            async def predict(text: str) -> dict[str, float]:
                body = {"inputs": [text], "top_k": 1000}
                r = await c.post(f"/v1/models/{model}/predict", json=body)
                return {n["token"]: n["prob"] for n in r.json()["outputs"][0]["next"]}

            sid = (await c.post("/v1/sessions", json={"model": model})).json()["session_id"]
            cuts = [0, 7, 8, 40, 41, 90, len(TEXT)]
            versions, diff = [], 0.0
            for i, j in itertools.pairwise(cuts):
                body = {"text": TEXT[i:j], "top_k": 1000}
                f = (await c.post(f"/v1/sessions/{sid}/feed", json=body)).json()
                versions.append(f["version"])
            got = {n["token"]: n["prob"] for n in f["output"]["next"]}
            want = await predict(TEXT)
            diff = max(abs(got[k] - want[k]) for k in want)
            key = {"Idempotency-Key": "gpu-check-1"}
            body = {"text": "A", "top_k": 1000}
            first = (await c.post(f"/v1/sessions/{sid}/feed", json=body, headers=key)).json()
            again = (await c.post(f"/v1/sessions/{sid}/feed", json=body, headers=key)).json()
            after = {n["token"]: n["prob"] for n in first["output"]["next"]}
            want2 = await predict(TEXT + "A")
            diff = max(diff, *(abs(after[k] - want2[k]) for k in want2))
            state = (await c.get(f"/v1/sessions/{sid}")).json()
    counted = versions == list(range(1, len(versions) + 1))
    replayed = again.get("replayed") is True and state["version"] == first["version"]
    return {
        **_check(diff, tol),
        "ok": bool(diff <= tol and counted and replayed),
        "versions_counted_once": counted,
        "retry_replayed": replayed,
    }


# -- measurements ----------------------------------------------------------------------------


def bare(m: LoadedModel, n: int, seconds: float) -> dict[str, float]:
    """onnxruntime's decode step alone at batch n, state on the host and bound on the device."""
    r, man = m.runner, m.manifest
    tokens, ones = np.zeros((n, 1), np.int64), np.ones(n, np.int32)
    out: dict[str, float] = {}
    host: list[Any] = man.init_states(n)
    dev: list[Any] = DeviceState(r).join([], [host])
    for place, states, call in (("host", host, r.run), ("device", dev, r.run_bound)):
        for _ in range(3):
            _, states = call(tokens, ones, states)
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            _, states = call(tokens, ones, states)
            steps += 1
        per = (time.perf_counter() - start) / steps
        out[f"{place}_step_ms"] = round(per * 1e3, 3)
        out[f"{place}_tokens_per_s"] = round(n / per)
    return out


def engine_runs(
    models: Path, model: str, env: dict[str, str], a: argparse.Namespace
) -> dict[str, Any]:
    """Streams and session steps through one engine process (bench.engine_load's)."""
    counts = [int(x) for x in a.streams.split(",")]
    engine = Engine(REPO, max(counts), models=models, settings=env)
    try:
        out: dict[str, Any] = {}
        for n in [int(x) for x in a.step_clients.split(",")]:
            out[f"step-{n}"] = measure(engine, "step", n, a.seconds, a.warm, model)
        for n in counts:
            out[f"streams-{n}"] = measure(engine, "streams", n, a.seconds, a.warm, model)
        return out
    finally:
        engine.stop()


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "onnxruntime": ort.__version__}
    if shutil.which("nvidia-smi"):
        q = "name,driver_version,memory.total"
        r = subprocess.run(
            ["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        )
        info["gpus"] = [line.strip() for line in r.stdout.splitlines() if line.strip()]
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--provider", choices=sorted(PROVIDERS), default="cuda")
    ap.add_argument("--models-dir", type=Path, default=REPO / "models")
    ap.add_argument("--model", default="char-lstm")
    ap.add_argument("--variants", default="fp32,fp16", help="those the manifest has are run")
    ap.add_argument("--streams", default="256,1024,4096")
    ap.add_argument("--step-clients", default="32,256")
    ap.add_argument("--seconds", type=float, default=5.0, help="each measurement's window")
    ap.add_argument("--warm", type=float, default=2.0)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    started = time.perf_counter()
    providers = PROVIDERS[a.provider]
    if providers[0] not in ort.get_available_providers():
        log(f"{providers[0]} is not in this onnxruntime ({ort.get_available_providers()})")
        return 2
    # only the model under test, so the engine process loads nothing else
    only = Path(tempfile.mkdtemp(prefix="rnnserve-gpu-check-"))
    (only / a.model).symlink_to((a.models_dir / a.model).resolve())
    report: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "args": {k: str(v) for k, v in vars(a).items()},
        "variants": {},
    }
    ok = True
    try:
        for variant in a.variants.split(","):
            reg = load_registry(only, providers, variant=None if variant == "fp32" else variant)
            m = reg.models[a.model]
            if (m.variant or "fp32") != variant:
                log(f"{a.model} has no {variant} graph: skipped")
                continue
            tol = tolerance(a.provider, variant)
            log(f"{variant}: checks on {m.runner.providers}")
            checks = contract_checks(m, tol, a.provider, scaled=variant == "fp16")
            settings = Settings(
                models_dir=only,
                providers=providers,
                variant=None if variant == "fp32" else variant,
                max_wait_ms=1.0,
                log_json=False,
                log_level="warning",
            )
            checks["sessions"] = asyncio.run(session_checks(settings, a.model, tol))
            for name, c in checks.items():
                log(f"  {name}: {'ok' if c['ok'] else 'FAILED'} {c}")
                ok &= bool(c["ok"])
            res: dict[str, Any] = {"checks": checks, "bare": {}}
            for n in [int(x) for x in a.streams.split(",")]:
                res["bare"][n] = bare(m, n, min(a.seconds, 3.0))
                log(f"  bare B={n}: {res['bare'][n]}")
            env = {"RNNSERVE_PROVIDERS": json.dumps(providers)}
            if variant != "fp32":
                env["RNNSERVE_VARIANT"] = variant
            res["engine"] = engine_runs(only, a.model, env, a)
            for k, v in res["engine"].items():
                log(f"  {k}: {v['rate']:.0f}/s, engine {v['us_per_unit']} us CPU each")
                ok &= v["errors"] == 0
            report["variants"][variant] = res
            del reg, m
    finally:
        shutil.rmtree(only, ignore_errors=True)
    report["ok"], report["wall_s"] = ok, round(time.perf_counter() - started, 1)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = a.out or OUT / f"gpu-check-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    log(f"{'all checks passed' if ok else 'CHECKS FAILED'} in {report['wall_s']} s: wrote {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
