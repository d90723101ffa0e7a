"""The `rnnserve` command line.

This module only dispatches. It lives outside both halves on purpose: `service/` may not import
`training/`, and `training/` may import only the contract, yet one `rnnserve` command serves both.
The serve command needs only the serving extra; training commands import torch lazily, so
`rnnserve serve` works in a torch-free install.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Train LSTM/GRU models and serve them with stateful sessions.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def serve(
    models_dir: Annotated[
        Path | None, typer.Option(help="Folder of model artifacts (default: RNNSERVE_MODELS_DIR)")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default: RNNSERVE_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: RNNSERVE_PORT)")] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="API worker processes before one engine process (RNNSERVE_WORKERS)"),
    ] = None,
) -> None:
    """Serve every model under the models folder over HTTP and WebSocket."""
    from service.server import serve as run_server
    from service.settings import Settings

    # flags win over the environment; each is already typed and checked by typer
    given = {"models_dir": models_dir, "host": host, "port": port, "workers": workers}
    settings = Settings().model_copy(update={k: v for k, v in given.items() if v is not None})
    run_server(settings)


def _register_training() -> None:
    # training/ ships in the same distribution, but its commands need the `train` extra; they are
    # listed either way and explain what to install when torch is missing.
    if importlib.util.find_spec("training.cli") is None:
        return
    from training.cli import register

    register(app)


_register_training()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
