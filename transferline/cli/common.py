"""What every command shares: the error console and the params check.

Nothing heavy here: `transferline --help` imports this package and must not
load torch, Prefect or MLflow; each command imports those when it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

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


def print_json(obj: object) -> None:
    """One JSON document on stdout (messages go to stderr), for `--json`."""
    import json
    import sys

    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
