"""Tables (markdown) and plots (PNG) from one results JSON: `python -m bench.report RESULTS.json`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

TARGETS_ORDER = (
    "rnnserve",
    "floor",
    "pytriton-bin",
    "pytriton-json",
    "torchserve",
    "mlserver",
    "bentoml",
)


def _f(x: float | None, nd: int = 1) -> str:
    return "—" if x is None or x != x else f"{x:,.{nd}f}"


def wrk_table(block: dict[str, Any]) -> str:
    rows = [
        "| target | req/s (median) | × floor | × PyTriton-bin | p50 ms | p99 ms | "
        "server CPU (cores) | req/s per server core | client CPU (cores) | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in [t for t in TARGETS_ORDER if t in block["targets"]]:
        r = block["targets"][t]
        xf = "1" if t == "floor" else _f(r.get("x_floor"), 2)
        xp = "1" if t == "pytriton-bin" else _f(r.get("x_pytriton-bin"), 2)
        per_core = r["rps"] / r["server_cpu"] if r["server_cpu"] else float("nan")
        rows.append(
            f"| {t} | {_f(r['rps'], 0)} | {xf} | {xp} | {_f(r['p50_ms'], 2)} | "
            f"{_f(r['p99_ms'], 2)} | {_f(r['server_cpu'], 2)} | {_f(per_core, 0)} | "
            f"{_f(r['client_cpu'], 2)} | {r['errors']} |"
        )
    return "\n".join(rows)


def gen_table(gen: dict[str, Any]) -> str:
    ours = gen.get("rnnserve", {})
    floor = gen.get("floor", {})
    one = ours.get("1", {}).get("tokens_per_s")
    rows = [
        "| streams | rnnserve tok/s | × its 1 stream | TTFT p50 / p99 ms | ITL p50 / p99 ms | "
        "server CPU | client CPU | floor tok/s | floor ITL p50 / p99 ms | rnnserve × floor |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in sorted(ours, key=int):
        r, f = ours[n], floor.get(n)
        x1 = r["tokens_per_s"] / one if one else float("nan")
        rows.append(
            f"| {n} | {_f(r['tokens_per_s'], 0)} | {_f(x1, 1)} | {_f(r['ttft_p50_ms'])} / "
            f"{_f(r['ttft_p99_ms'])} | {_f(r['itl_p50_ms'], 2)} / {_f(r['itl_p99_ms'], 2)} | "
            f"{_f(r['server_cpu'], 2)} | {_f(r['client_cpu'], 2)} | "
            f"{_f(f['tokens_per_s'], 0) if f else '—'} | "
            f"{(_f(f['itl_p50_ms'], 2) + ' / ' + _f(f['itl_p99_ms'], 2)) if f else '—'} | "
            f"{_f(r['tokens_per_s'] / f['tokens_per_s'], 1) if f and f['tokens_per_s'] else '—'} |"
        )
    return "\n".join(rows)


def foot_table(foot: dict[str, Any]) -> str:
    rows = [
        "| server | start-up to ready s | idle PSS MB | loaded PSS MB | processes | "
        "venv on disk MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in foot.items():
        if "error" in r:
            rows.append(f"| {name} | failed: {r['error'][:60]} | | | | |")
            continue
        rows.append(
            f"| {name} | {_f(r['startup_s'], 2)} | {_f(r['idle_pss_mb'], 0)} | "
            f"{_f(r.get('loaded_pss_mb'), 0)} | {r['processes']} | "
            f"{_f(r.get('install_mb'), 0)} |"
        )
    return "\n".join(rows)


def overhead_table(oh: dict[str, Any]) -> str:
    rows = [
        "| batch | bare onnxruntime step ms | engine decode step ms | engine / bare (median round) "
        "| rounds' range | bare spread |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in oh["rows"]:
        span = (
            f"{_f(r['ratio_min'], 3)}-{_f(r['ratio_max'], 3)} ({r['rounds']})"
            if "ratio_min" in r
            else "—"
        )
        rows.append(
            f"| {r['batch']} | {_f(r['bare_ms'], 3)} | {_f(r['engine_ms'], 3)} | "
            f"{_f(r['ratio'], 3)} | {span} | {_f(100 * r['bare_spread'], 0)} % |"
        )
    return "\n".join(rows)


def capacity_table(c: dict[str, Any]) -> str:
    avg = c.get("bytes_per_session_average")
    return (
        "| sessions | raw state B | + last logits B | marginal B / session (PSS slope n/10→n) | "
        "× raw state | average B / session (incl. fixed costs) | create+feed s |\n"
        "|---:|---:|---:|---:|---:|---:|---:|\n"
        f"| {c['sessions']:,} | {c['raw_state_bytes']:,} | {c['logits_bytes']:,} | "
        f"{_f(c['bytes_per_session'], 0)} | {_f(c['ratio'], 2)} | {_f(avg, 0)} | "
        f"{_f(c['create_feed_s'], 1)} |"
    )


def targets_table(res: dict[str, Any]) -> str:
    rows = ["| target (issue 7) | measured | met? |", "|---|---|---|"]

    def add(name: str, value: float | None, goal: float, fmt: str, higher: bool) -> None:
        if value is None:
            rows.append(f"| {name} | not measured | — |")
            return
        ok = value >= goal if higher else value <= goal
        rows.append(f"| {name} | {fmt.format(value)} | {'**met**' if ok else '**missed**'} |")

    st = res.get("step", {}).get("targets", {}).get("rnnserve", {})
    add(
        "session step ≥ 3× PyTriton-binary req/s (32 clients)",
        st.get("x_pytriton-bin"),
        3.0,
        "{:.2f}×",
        True,
    )
    gen = res.get("generate", {}).get("rnnserve", {})
    if "1" in gen and "256" in gen:
        add(
            "256 streams ≥ 20× one stream's tokens/s",
            gen["256"]["tokens_per_s"] / gen["1"]["tokens_per_s"],
            20.0,
            "{:.1f}×",
            True,
        )
    if "64" in gen:
        add(
            "inter-token p99 ≤ 10 ms at 64 streams",
            gen["64"]["itl_p99_ms"],
            10.0,
            "{:.2f} ms",
            False,
        )
    cl = res.get("classify", {}).get("targets", {})
    if "rnnserve" in cl:
        peers = {t: r["rps"] for t, r in cl.items() if t not in ("rnnserve", "floor")}
        if peers:
            best = max(peers, key=lambda t: peers[t])
            add(
                f"classification ≥ 2× the best peer ({best})",
                cl["rnnserve"]["rps"] / peers[best],
                2.0,
                "{:.2f}×",
                True,
            )
    ours = res.get("footprint", {}).get("rnnserve", {})
    if "startup_s" in ours:
        add("start-up ≤ 1.5 s", ours["startup_s"], 1.5, "{:.2f} s", False)
        add("idle PSS ≤ 150 MB", ours["idle_pss_mb"], 150, "{:.0f} MB", False)
    if "capacity" in res:
        add(
            "memory per idle session ≤ 1.5× raw state bytes",
            res["capacity"]["ratio"],
            1.5,
            "{:.2f}×",
            False,
        )
    if "overhead" in res:
        r64 = next((r for r in res["overhead"]["rows"] if r["batch"] == 64), None)
        add(
            "engine step ≤ 1.10× raw onnxruntime call at batch 64",
            r64["ratio"] if r64 else None,
            1.10,
            "{:.2f}×",
            False,
        )
    return "\n".join(rows)


def plots(res: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    made = []
    gen = res.get("generate", {})
    if gen:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, runs in gen.items():
            ns = sorted(runs, key=int)
            ax.plot([int(n) for n in ns], [runs[n]["tokens_per_s"] for n in ns], "o-", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel("aggregate tokens/s")
        ax.set_title("Streaming generation, 2×256 LSTM (2 CPU cores)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "generation_throughput.png", dpi=110)
        plt.close(fig)
        made.append("generation_throughput.png")
        fig, ax = plt.subplots(figsize=(6, 4))
        styles = {"16": ":", "64": "-", "256": "--"}
        for c, (name, runs) in enumerate(gen.items()):
            for n, ls in styles.items():
                if n in runs and runs[n].get("itl_sample"):
                    # seconds -> ms; tokens that came in the same read as the one before
                    # (gap 0) are drawn at 0.01 ms
                    s = np.maximum(np.asarray(runs[n]["itl_sample"]) * 1e3, 0.01)
                    ax.plot(
                        s,
                        np.linspace(0, 1, s.size),
                        ls,
                        color=f"C{c}",
                        label=f"{name}, {n} streams",
                    )
        ax.set_xscale("log")
        ax.set_xlabel("inter-token latency (ms)")
        ax.set_ylabel("fraction of tokens ≤ x")
        ax.set_title("Inter-token latency CDF (client side)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "itl_cdf.png", dpi=110)
        plt.close(fig)
        made.append("itl_cdf.png")
    for wl in ("step", "classify"):
        if wl not in res:
            continue
        tg = res[wl]["targets"]
        names = [t for t in TARGETS_ORDER if t in tg]
        fig, ax = plt.subplots(figsize=(7, 3.6))
        ax.bar(
            names,
            [tg[t]["rps"] for t in names],
            color=["C3" if t == "rnnserve" else "C0" for t in names],
        )
        ax.set_ylabel("requests/s (median)")
        ax.set_title(
            f"{'Session step (1 char/request)' if wl == 'step' else 'IMDB classification'}"
            ", 32 clients"
        )
        ax.tick_params(axis="x", rotation=25)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / f"{wl}_rps.png", dpi=110)
        plt.close(fig)
        made.append(f"{wl}_rps.png")
    return made


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    parts = [
        f"Run {res['started']} on {m['cpu']}, {m['cores']} cores, {m['mem_gb']} GB; "
        f"load average before {tuple(round(x, 2) for x in res['load_before'])}, after "
        f"{tuple(round(x, 2) for x in res.get('load_after', ()))}; wall "
        f"{res.get('wall_s', 0):.0f} s. Python {m['python']}, onnxruntime "
        f"{m['onnxruntime']}, FastAPI {m['fastapi']}, uvicorn {m['uvicorn']}, {m['wrk']}.",
        "",
        "Peers: "
        + "; ".join(
            f"{k}: " + ", ".join(f"{a} {b}" for a, b in v.items())
            for k, v in res.get("peer_versions", {}).items()
        ),
        "",
    ]
    parts += ["### Targets", "", targets_table(res), ""]
    if "step" in res:
        parts += [
            "### Session step (one character per request, 32 clients)",
            "",
            wrk_table(res["step"]),
            "",
        ]
    if "classify" in res:
        parts += [
            f"### Classification (IMDB reviews, mean {res.get('classify_text_chars', 0):.0f}"
            " chars, 32 clients)",
            "",
            wrk_table(res["classify"]),
            "",
        ]
    if "generate" in res:
        parts += [
            "### Streaming generation (2×256 LSTM, SSE, 200 tokens per generation)",
            "",
            gen_table(res["generate"]),
            "",
        ]
    if "footprint" in res:
        parts += ["### Footprint", "", foot_table(res["footprint"]), ""]
    if "capacity" in res:
        parts += ["### Session capacity (in-memory store)", "", capacity_table(res["capacity"]), ""]
    if "overhead" in res:
        parts += ["### Engine overhead (in-process)", "", overhead_table(res["overhead"]), ""]
    return "\n".join(parts)


def write(res: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    plots(res, out)
    (out / "latest.md").write_text(markdown(res))


if __name__ == "__main__":
    r = json.loads(Path(sys.argv[1]).read_text())
    dest = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("bench/.out/report")
    write(r, dest)
    print((dest / "latest.md").read_text())
