"""What every command shares: the error console and the params check.

Nothing heavy here: `transferline --help` imports this package and must not
load torch, Prefect or MLflow; each command imports those when it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import os

import typer
from rich.console import Console

if TYPE_CHECKING:
    from transferline.config import Params

console = Console(stderr=True)


def params_or_exit(path: Path | None = None) -> Params:
    """The validated params (default: params.yaml), or one red line and exit 2 (also when
    not run from the project root)."""
    from transferline.config import ParamsError, load_params

    if not Path("dvc.yaml").is_file():
        console.print("[red]error:[/] no dvc.yaml here; run transferline from the project root")
        raise typer.Exit(2)
    try:
        return load_params(path) if path is not None else load_params()
    except ParamsError as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None


def use_local_server() -> str | None:
    """Point PREFECT_API_URL at the project's local Prefect server when `transferline server start`
    left one up (a user's own PREFECT_API_URL wins); the URL, or None for Prefect's ephemeral API."""
    from transferline.localserver import running

    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    server = running(Path(os.environ["PREFECT_HOME"]))
    if server is None:
        return None
    os.environ["PREFECT_API_URL"] = server.api_url
    return server.api_url
