"""Training commands for the `rnnserve` CLI: train, evaluate, sample, compare, reproduce, data.

`register(app)` adds them to the top-level typer app (rnnserve/cli.py); `train_app` holds them
for standalone use (`python -m training.cli`). torch is imported only inside command bodies, so
importing this module (and `rnnserve serve`) works without the `train` extra.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from training.config import ConfigError, load_config

SHIPPED = (
    "sentiment-lstm",
    "sentiment-lstm-large",
    "sentiment-sst2",
    "sentiment-gru",
    "char-lstm",
    "char-gru",
)
# a shipped model fine-tuned from a run that is not shipped: that run is trained first
PRETRAIN = {"sentiment-sst2": "imdb-pretrain"}
INT8_SHIPPED = ("sentiment-lstm", "char-lstm")
FP16_SHIPPED = ("char-lstm",)  # one fp16 variant, for GPUs (each variant adds to models/)


def _need_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        typer.echo("this command needs the train extra: pip install 'rnnserve[train]'", err=True)
        raise typer.Exit(1) from None


def _config(path: str, overrides: list[str]) -> Any:
    try:
        return load_config(path, overrides)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def train_cmd(
    ctx: typer.Context,
    config: Annotated[
        str, typer.Argument(help="TOML file, or a name in training/configs/ (e.g. char-lstm)")
    ],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="key=value overrides, e.g. model.hidden_size=256")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="key=value override (repeatable)")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder (default: runs/<name>)")] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Resume from RUN_DIR/last.pt (or a run folder)")
    ] = None,
) -> None:
    """Train one experiment into a run folder (checkpoint.pt, metrics.jsonl, learning_curve.png...)."""
    _need_torch()
    from training.experiment import train

    extra = [a for a in ctx.args if "=" in a]  # `--model.hidden_size=256` style, passed through
    cfg = _config(config, [*(overrides or []), *extra, *(set_ or [])])
    if resume is not None and resume.is_dir():
        resume = resume / "last.pt"
    summary = train(cfg, out, resume=resume)
    typer.echo(json.dumps(summary, indent=1))


def evaluate_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (or its checkpoint.pt)")],
    data: Annotated[
        Path | None, typer.Option(help="File/folder to score (default: the run's validation split)")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="imdb | sst2 | table | text (default: the run's)")
    ] = None,
    split: Annotated[
        str, typer.Option(help="Split folder for aclImdb / GLUE layouts (test, dev, train)")
    ] = "test",
    batch_size: Annotated[int, typer.Option(help="0 = the run's eval_batch_size")] = 0,
    limit: Annotated[int, typer.Option(help="Score only the first N examples / characters")] = 0,
    device: Annotated[str, typer.Option()] = "auto",
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the report as JSON")
    ] = None,
) -> None:
    """Accuracy, F1, confusion matrix (classifiers); nats/char, bits/char, perplexity (LMs)."""
    _need_torch()
    from training.evaluate import evaluate_run, format_report

    rep = evaluate_run(
        run_dir,
        data,
        dataset=dataset,
        split=split,
        batch_size=batch_size,
        device=device,
        limit=limit,
    )
    typer.echo(format_report(rep))
    if json_out is not None:
        json_out.write_text(json.dumps(rep, indent=1) + "\n")


def sample_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A character-model run folder")],
    prompt: Annotated[str, typer.Option(help="Text fed before sampling")] = "\n",
    length: Annotated[int, typer.Option(min=1, help="Characters to generate")] = 300,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy")] = 0.8,
    top_k: Annotated[int | None, typer.Option(min=1, help="Sample among the k most likely")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option()] = "cpu",
) -> None:
    """Generate text from a next-character model (a classifier prints label probabilities)."""
    _need_torch()
    import torch

    from training.sample import classify, sample

    task = torch.load(
        run_dir / "checkpoint.pt" if run_dir.is_dir() else run_dir,
        map_location="cpu",
        weights_only=False,
    )["model_config"]["task"]
    if task == "classify":
        typer.echo(json.dumps(classify(run_dir, prompt, device), indent=1))
        return
    typer.echo(sample(run_dir, prompt, length, temperature, top_k, seed, device))


def compare_cmd(
    config: Annotated[
        str, typer.Argument(help="Base config (its cell/hidden size set the parameter budget)")
    ],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: runs/compare-<name>)")
    ] = None,
    cells: Annotated[
        str, typer.Option(help="Comma-separated cells")
    ] = "lstm,gru,rnn,peephole_lstm",
    minutes: Annotated[
        float, typer.Option(help="Wall-clock budget per cell (0 = the config's)")
    ] = 0.0,
    steps: Annotated[int, typer.Option(help="Step budget per cell (0 = the config's)")] = 0,
) -> None:
    """Train every cell at matched parameter counts on the same budget; table + overlay plot."""
    _need_torch()
    from training.compare import compare

    cfg = _config(config, overrides or [])
    dest = out or Path("runs") / f"compare-{cfg.name}"
    compare(cfg, dest, tuple(c.strip() for c in cells.split(",") if c.strip()), minutes, steps)
    typer.echo((dest / "compare.md").read_text())


def reproduce_cmd(
    only: Annotated[
        str, typer.Option(help="Comma-separated subset of " + ", ".join(SHIPPED))
    ] = ",".join(SHIPPED),
    runs: Annotated[Path, typer.Option(help="Where the run folders go")] = Path("runs"),
    models: Annotated[Path, typer.Option(help="Where the exported artifacts go")] = Path("models"),
    version: Annotated[str, typer.Option(help="Artifact version")] = "1",
    export: Annotated[bool, typer.Option(help="Export each model after training")] = True,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="key=value override for every run, e.g. train.max_minutes=0 on a GPU"
        ),
    ] = None,
) -> None:
    """Retrain every shipped model from its committed config, then export it to models/NAME."""
    _need_torch()
    from training.experiment import train

    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SHIPPED]
    if unknown:
        typer.echo(f"error: unknown model(s) {unknown}; shipped: {', '.join(SHIPPED)}", err=True)
        raise typer.Exit(2)
    for name in names:
        run_dir = runs / name
        typer.echo(f"== {name}: training into {run_dir}")
        overrides = list(set_ or [])
        if name in PRETRAIN:  # its pretraining run first, in this reproduction's --runs
            base = runs / PRETRAIN[name]
            typer.echo(f"== {name}: pretraining {PRETRAIN[name]} into {base}")
            train(_config(PRETRAIN[name], list(set_ or [])), base)
            overrides.append(f"train.init_from='{base}'")
        train(_config(name, overrides), run_dir)
        if export:
            from training.export import export_command

            typer.echo(f"== {name}: exporting to {models / name}")
            # int8 only where onnxruntime has a quantized kernel for the cell (LSTM)
            export_command(run_dir, models / name, name, version, int8=name in INT8_SHIPPED)
            if name in FP16_SHIPPED:
                from training.export.run import quantize_command

                # its state crosses in half precision too: half the bytes a row on the device
                quantize_command(models / name, None, "fp16", "float16")


def export_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Training run folder (holds checkpoint.pt).")],
    out: Annotated[Path, typer.Option(help="Artifact folder to write, e.g. models/NAME.")],
    name: Annotated[
        str | None, typer.Option(help="Model name (default: the --out folder's name).")
    ] = None,
    version: Annotated[str, typer.Option(help="Model version.")] = "1",
    int8: Annotated[
        bool,
        typer.Option(
            help="Also add an int8 (dynamically quantized) variant, kept only if the run's "
            "validation metric holds within --int8-tolerance."
        ),
    ] = False,
    int8_tolerance: Annotated[
        float | None,
        typer.Option(
            help="Worst allowed change, fp32 -> int8. Default: next_token +0.02 nats/char "
            "validation loss (first 20,000 validation characters); classify -0.005 validation "
            "accuracy (0.5 percentage points)."
        ),
    ] = None,
) -> None:
    """Export a run to ONNX + manifest, verified (parity, chunked == whole) before writing."""
    _need_torch()
    from training.export import export_command

    export_command(run_dir, out, name, version, int8, int8_tolerance)


def quantize_cmd(
    model_dir: Annotated[Path, typer.Argument(help="An exported model folder, e.g. models/NAME.")],
    tolerance: Annotated[
        float | None,
        typer.Option(help="Worst allowed change from fp32 (defaults as for export --int8)."),
    ] = None,
    kind: Annotated[
        str,
        typer.Option(
            help="int8 (dynamic quantization, for CPU) or fp16 (half precision, for GPU)."
        ),
    ] = "int8",
    state_dtype: Annotated[
        str,
        typer.Option(
            help="fp16 only: float16 makes the graph's state inputs and outputs half precision "
            "too (sessions, the decode batch and state blobs of that variant hold half the "
            "bytes); float32 keeps them as the fp32 graph's."
        ),
    ] = "float32",
) -> None:
    """Add an int8 or fp16 variant to an exported model, kept only if its validation metric
    holds (the data is rebuilt from the training config in its manifest; no run folder needed)."""
    _need_torch()
    from training.export.run import quantize_command

    if kind not in ("int8", "fp16"):
        typer.echo(f"error: --kind must be int8 or fp16, not {kind!r}", err=True)
        raise typer.Exit(2)
    if state_dtype not in ("float32", "float16") or (state_dtype == "float16" and kind != "fp16"):
        typer.echo(
            f"error: --state-dtype must be float32, or float16 with --kind fp16; not {state_dtype!r}",
            err=True,
        )
        raise typer.Exit(2)
    quantize_command(
        model_dir,
        tolerance,
        "int8" if kind == "int8" else "fp16",
        "float16" if state_dtype == "float16" else "float32",
    )


def download_cmd(
    name: Annotated[str, typer.Argument(help="imdb | sst2 | tinyshakespeare")],
    to: Annotated[Path, typer.Option("--to", help="Target folder")] = Path("data"),
) -> None:
    """Fetch a public dataset, verify its checksum, unpack it into the loaders' layout."""
    from training.data.download import DownloadError, download

    try:
        download(name, to, log=typer.echo)
    except DownloadError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None


_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def register(app: typer.Typer) -> None:
    """Add the training commands and the `data` group to `app`."""
    app.command("train", context_settings=_PASSTHROUGH)(train_cmd)
    app.command("evaluate")(evaluate_cmd)
    app.command("sample")(sample_cmd)
    app.command("compare")(compare_cmd)
    app.command("reproduce")(reproduce_cmd)
    app.command("export")(export_cmd)
    app.command("quantize")(quantize_cmd)
    data_app = typer.Typer(help="Datasets: download the public originals.", no_args_is_help=True)
    data_app.command("download")(download_cmd)
    app.add_typer(data_app, name="data")


train_app = typer.Typer(
    help="rnnserve training commands.", no_args_is_help=True, add_completion=False
)
register(train_app)

if __name__ == "__main__":
    train_app()
