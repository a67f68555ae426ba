"""`transferline server start|stop|status`: the project's long-lived local Prefect server.

`transferline run` and `check` start it when it is down (orchestrate.local_server)
and use it instead of Prefect's ephemeral API (see transferline/localserver.py).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from transferline.cli.common import console
from transferline.env import apply_env_defaults

app = typer.Typer(help="The project's local Prefect server on 127.0.0.1 (state in .transferline/prefect): "
                  "the first run or check starts it (orchestrate.local_server), later ones reuse it, so no "
                  "run waits for Prefect's ephemeral API; its UI shows every flow run.",
                  no_args_is_help=True)


def _home() -> Path:
    apply_env_defaults()
    return Path(os.environ["PREFECT_HOME"])


@app.command()
def start(
    port: int = typer.Option(None, help="Port on 127.0.0.1 (default: a free one)."),
    timeout: float = typer.Option(180.0, help="Seconds to wait for the server to answer."),
) -> None:
    """Start the server in the background (or say where the running one is)."""
    from transferline.localserver import start as start_server

    try:
        server = start_server(_home(), port, timeout)
    except RuntimeError as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(1) from None
    console.print(f"Prefect server up at {server.url} (pid {server.pid}); run and check use it. "
                  f"Stop it with `transferline server stop`.")


@app.command()
def stop() -> None:
    """Stop the server (the next run or check starts it again, unless orchestrate.local_server is false)."""
    from transferline.localserver import stop as stop_server

    server = stop_server(_home())
    console.print(f"stopped the Prefect server at {server.url}" if server else "no transferline Prefect server running")


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """Say whether the server is up, and where."""
    from transferline.localserver import running

    server = running(_home())
    if as_json:
        info = {"running": server is not None, **({"pid": server.pid, "api_url": server.api_url} if server else {})}
        sys.stdout.write(json.dumps(info) + "\n")
    elif server:
        console.print(f"up at {server.url} (pid {server.pid}); API {server.api_url}")
    else:
        console.print("not running (the next run or check starts it, unless params.yaml sets "
                      "orchestrate.local_server: false; `transferline server start` starts it now)")
