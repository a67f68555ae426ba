"""What every command shares: the error console and the params check.

Nothing heavy here: `transferline --help` imports this package and must not
load torch, Prefect or MLflow; each command imports those when it runs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

if TYPE_CHECKING:
    from transferline.config import Params

console = Console(stderr=True)
NOT_A_PROJECT = ("no dvc.yaml here; run transferline from the project root, or make a project for your data "
                 "with `transferline init DIR --image-folder PATH` (or --text-file)")


def params_or_exit(path: Path | None = None) -> Params:
    """The validated params (default: params.yaml), or one red line and exit 2 (also when
    not run from the project root)."""
    from transferline.config import ParamsError, load_params

    if not Path("dvc.yaml").is_file():
        console.print(f"[red]error:[/] {NOT_A_PROJECT}")
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


def log_levels(
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log lines (-v: info, -vv: debug)."),
    quiet: int = typer.Option(0, "--quiet", "-q", count=True, help="Fewer log lines (-q: warnings, -qq: errors)."),
) -> None:
    """Log levels for every command: this process's and the Prefect flow's (PREFECT_LOGGING_LEVEL)."""
    import logging
    import os

    step = max(-2, min(2, verbose - quiet))
    if step == 0:
        return  # the defaults: INFO from our commands, WARNING from Prefect (transferline.env), or the user's own
    level = {2: logging.DEBUG, 1: logging.INFO, -1: logging.WARNING, -2: logging.ERROR}[step]
    logging.basicConfig(level=level, format="%(message)s")
    logging.getLogger().setLevel(level)
    os.environ["PREFECT_LOGGING_LEVEL"] = logging.getLevelName(level)


def preflight_or_exit(params: Params, push: bool) -> None:
    """Every problem the pre-flight finds (the repository, servers, remote, the modality's data
    and weights), all at once, then exit 2: before Prefect starts or any stage runs."""
    import importlib

    from transferline.preflight import PreflightFailed, shared_problems

    checks = importlib.import_module(f"transferline.{params.modality}.preflight")  # the other modality stays unread
    problems = shared_problems(params.tracking, push) + checks.check(params)
    if problems:
        console.print(f"[red]error:[/] {PreflightFailed(problems)}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)


def tracking_or_exit(params: Params) -> None:
    """A registry command on a damaged or unreachable tracking store: one line and exit 2, not a traceback."""
    from transferline.preflight import tracking_problems

    for problem in tracking_problems(params.tracking):
        console.print(f"[red]error:[/] {problem}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)


def use_local_server(start: bool) -> str | None:
    """Point PREFECT_API_URL at the project's local Prefect server (a user's own PREFECT_API_URL
    wins): the one already up, else, with `start` (params.yaml `orchestrate.local_server`), one
    started now in the background and kept for later commands. The URL, or None for Prefect's
    ephemeral API (also when the server will not start: the run goes on without it)."""
    from transferline import localserver

    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    home = Path(os.environ["PREFECT_HOME"])
    server = localserver.running(home)
    if server is None and start:
        try:
            server = localserver.start(home, timeout=60)
        except RuntimeError as err:
            console.print(f"[yellow]warning:[/] {str(err).splitlines()[0]}; using Prefect's ephemeral API",
                          highlight=False, soft_wrap=True)
            return None
        console.print(f"started this project's Prefect server at {server.url} (UI and flow runs there; "
                      "later runs reuse it; `transferline server stop` stops it)", highlight=False, soft_wrap=True)
    if server is None:
        return None
    os.environ["PREFECT_API_URL"] = server.api_url
    return server.api_url


@contextlib.contextmanager
def no_flow_heartbeats() -> Iterator[None]:
    """The flows this command runs send no Prefect heartbeat, unless a Prefect setting asks for
    them (PREFECT_FLOWS_HEARTBEAT_FREQUENCY, a profile, prefect.toml): then they do.

    A heartbeat lets an automation on the server mark a flow run Crashed once its process stops
    sending them (none is set up on a local server). Here transferline.runguard marks a killed
    run's flow runs Crashed at once. Prefect's heartbeat thread sleeps in 1 s steps and the flow
    joins it at its end: 0.7-0.9 s of every `run` and `check` (no-op run 4.4 s with, 3.5 s without).
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, temporary_settings

    if "heartbeat_frequency" in get_current_settings().flows.model_fields_set:
        yield
        return
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@contextlib.contextmanager
def ctrl_c_exits() -> Iterator[None]:
    """Ctrl-C ends the command with one line and exit 130, whatever error surfaces after it.

    The terminal's SIGINT also reaches Prefect's ephemeral API (a child in the same process
    group), so after it the flow's own reports fail with refused connections, which the
    command would otherwise name as the error (as a tracking server gone, exit 1), and
    Prefect's client retries them for about a minute: a second Ctrl-C leaves at once. The
    project's local server (the default) has a session of its own: one Ctrl-C ends the run in
    a fraction of a second."""
    import signal
    import sys

    pressed = []

    def on_ctrl_c(signum: int, frame: object) -> None:
        if not pressed and not os.environ.get("PREFECT_API_URL"):  # Prefect's client retries its API a minute
            sys.stderr.write("stopping: Prefect's ephemeral API went with Ctrl-C; Ctrl-C again leaves at once\n")
        pressed.append(signum)
        signal.default_int_handler(signum, frame)

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where the shell ignores it
        signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        yield
    except BaseException as err:
        if not (pressed or isinstance(err, KeyboardInterrupt)):
            raise
        console.print("[red]interrupted[/] (Ctrl-C): finished stages are kept; the next run goes on from there")
        raise typer.Exit(130) from None
    finally:
        if signal.getsignal(signal.SIGINT) is on_ctrl_c:
            signal.signal(signal.SIGINT, signal.default_int_handler)
