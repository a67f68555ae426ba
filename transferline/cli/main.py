"""`transferline`: the app and the pipeline commands (run, status, check, deploy).

Run it from the project root (the folder with dvc.yaml and params.yaml).
This module holds the app and the pipeline commands (run, status, check,
deploy); registry.py the registry commands, experiment.py the experiments.
Importing the package loads no torch, Prefect or MLflow: every command
imports what it needs when it runs, so `--help` answers at once.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from transferline.cli import card, experiment, init, predict, registry, server, steer
from transferline.cli.common import (
    console, ctrl_c_exits, log_levels, no_flow_heartbeats, params_or_exit, preflight_or_exit, print_json, tracking_or_exit,
    use_local_server,
)
from transferline.dvcrun import STAGES, outcome, prestart, warm_modality
from transferline.env import apply_env_defaults, exit_fast, imports_without_gc

app = typer.Typer(
    help="transferline: pretrain on a large source set, fine-tune on a small target task, "
    "prove the gain against a scratch baseline, and register the winner.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
)
app.callback()(log_levels)

Stage = enum.Enum("Stage", {s: s for s in STAGES})
Modality = enum.Enum("Modality", {m: m for m in ("image", "text")})


@app.command()
def run(
    until: Stage = typer.Option(None, help="Stop after this stage (default: run every stage)."),
    push: bool = typer.Option(True, help="Push data and checkpoints to the DVC remote after a full run."),
    modality: Modality = typer.Option(None, help="Switch the modality first: writes `modality:` into "
                                      "params.yaml (so DVC sees the change) and keeps it for later runs."),
    set_: list[str] = typer.Option(None, "--set", metavar="KEY=VALUE", help="Set a value in params.yaml first, "
                                   "validated (e.g. finetune.lr=3e-4: the active modality's finetune.lr); repeatable."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the stages that would run and why; change nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary (or the --dry-run plan) as JSON."),
) -> None:
    """Run the pipeline as a Prefect flow; DVC skips every stage that is up to date.

    Stages: ingest, validate, split, preprocess, pretrain, finetune (+ scratch
    baseline), evaluate, register. Every run is one MLflow run with a nested
    run per stage. Values come from params.yaml, the file every DVC stage
    reads and dvc.lock records.
    """
    sets = ([f"modality={modality.value}"] if modality is not None else []) + list(set_ or [])
    cfg, new_raw, changes = steer.validate_sets(sets)  # params.yaml with the sets, validated; nothing written yet
    if dry_run:  # what would stop the run before it starts, else the plan
        preflight_or_exit(cfg, push=push and until is None)
        info = steer.plan(changes, new_raw, until.value if until else None)
        print_json(info) if as_json else steer.print_plan(info)
        return
    preflight_or_exit(cfg, push=push and until is None)  # the data, weights, servers: seconds, before Prefect
    apply_env_defaults()
    from transferline import runguard

    use_local_server(start=cfg.orchestrate.local_server)
    from transferline.runlock import run_lock

    runguard.start()  # a killed run takes DVC, its stage and the local Prefect API with it
    with _run_errors(cfg.tracking.uri), run_lock(cfg.orchestrate.lock_wait_seconds), ctrl_c_exits():  # before Prefect
        steer.write_sets(changes)  # under the lock: a run in progress keeps the values it started with
        # DVC's status and the stages' warm-up start on the other core while Prefect loads here
        with prestart(warm_modality(cfg)):
            with imports_without_gc():
                from flows.pipeline import pipeline

            _quiet_user_errors()

            with no_flow_heartbeats():
                summary = pipeline(until=until.value if until else None, push_remote=push)
    print_json(summary) if as_json else _print_summary(summary)


@contextlib.contextmanager
def _run_errors(tracking_uri: str) -> Iterator[None]:
    """A failed run ends with one clear error line (the stage's own message) and exit 1."""
    import os

    from transferline.errors import StageError, connection_failure, tracking_unreachable
    from transferline.dvcrun import StageFailed
    from transferline.runlock import RunLockBusy

    try:
        yield
    except typer.Exit:  # said already (ctrl_c_exits)
        raise
    except StageFailed as err:  # the stage's own lines are on the console already: name it, once
        stage = str(err).split("\n", 1)[0].removesuffix(":")
        console.print(f"[red]error:[/] {stage} (its message is above; the full log is in the Prefect run)")
        raise typer.Exit(1) from None
    except (StageError, RunLockBusy) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(1) from None
    except TimeoutError as err:
        console.print(f"[red]error:[/] {err} (limits: params.yaml orchestrate.*_timeout_seconds)")
        raise typer.Exit(1) from None
    except Exception as err:
        if (why := connection_failure(err)) is None:
            raise
        # the tracking server went away mid-run (the stage and the flow could not even record it)
        uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri
        console.print(f"[red]error:[/] {tracking_unreachable(uri, why)}", soft_wrap=True)
        raise typer.Exit(1) from None


class _StageFailureFilter(logging.Filter):
    """Off the console: Prefect's copies of a stage failure or of a lost tracking server (its
    traceback, "Finished in state Failed(...StageFailed...)"). The stage printed its own lines and the CLI prints one summary;
    the copies stay in the Prefect run log (the API handler has no such filter)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from transferline.dvcrun import StageFailed
        from transferline.errors import connection_failure

        if record.exc_info and (isinstance(exc := record.exc_info[1], StageFailed) or connection_failure(exc)):
            return False
        message = record.getMessage()
        # "Max retries exceeded": requests' words for a tracking server that is gone (the CLI says it once)
        return not any(word in message for word in ("StageFailed", "StageRefused", "Max retries exceeded"))


def _quiet_user_errors() -> None:
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.addFilter(_StageFailureFilter())
    # a warning per retry of a refused connection; a lost tracking server is said once, at the end
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


def _print_summary(summary: dict) -> None:
    # seconds: the stage's wall time; work: the part its own code took (the rest: DVC, the process, imports)
    table = Table("stage", "status", "seconds", "work", title="transferline run")
    for row in summary["stages"]:
        work = row.get("work_seconds")
        table.add_row(row["stage"], outcome(row["ran"], row.get("restored", False)), f"{row['seconds']:.1f}",
                      "" if work is None else f"{work:.1f}")
    console.print(table)
    console.print(f"ran: {', '.join(summary['ran']) or 'nothing (all up to date)'}")
    console.print(f"skipped: {', '.join(summary['skipped']) or '-'}")
    metrics = Path("reports/metrics.json")
    if "evaluate" in summary["ran"] + summary["skipped"] and metrics.is_file():
        from transferline.metrics import gain_statement

        m = json.loads(metrics.read_text())
        console.print(
            f"test accuracy: fine-tuned {m['finetune']['accuracy']:.4f}, scratch {m['scratch']['accuracy']:.4f}, "
            f"{gain_statement(m)}"
        )
    candidates = Path("reports/candidates.json")
    if "finetune" in summary["ran"] + summary["skipped"] and candidates.is_file():
        console.print(f"starting point: {json.loads(candidates.read_text())['verdict']}")
    console.print(f"done in {summary['seconds']:.1f} s; MLflow run {summary['mlflow_run_id']}")


@app.command()
def status(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (keys: champion, last_run)."),
    params: Path = typer.Option(Path("params.yaml"), help="Parameters file."),
) -> None:
    """Show the current champion, its metrics, and the last pipeline run."""
    cfg = params_or_exit(params)
    tracking_or_exit(cfg)
    from transferline.status import kept_status

    info = kept_status(cfg)
    if as_json:
        sys.stdout.write(json.dumps(info, indent=2, default=str) + "\n")
        return
    out = Console()
    champ = info.get("champion")
    if champ:
        out.print(f"[bold]champion[/]: {champ['name']} version {champ['version']}")
        for k, v in sorted(champ.get("metrics", {}).items()):
            out.print(f"  {k}: {v}")
    else:
        out.print("[bold]champion[/]: none yet (run `transferline run`)")
    last = info.get("last_run")
    if last:
        out.print(f"[bold]last run[/]: {last['run_id']} {last['status']} started {last['start_time']}")
    if info.get("registry_gap"):
        out.print(f"[bold yellow]registry out of step with DVC[/]: {info['registry_gap']}", soft_wrap=True)


@app.command()
def check(
    push: bool = typer.Option(True, help="Push data and checkpoints to the DVC remote after a run."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (keys: action, changes, "
                                 "seconds, and pipeline: the run summary when it ran)."),
) -> None:
    """Run the pipeline only if the data or params changed (the data-triggered check).

    Re-reads the sources (re-fetches the pinned built-in sets and checks their
    sha256; DVC hashes a folder target), then asks `dvc status`. Nothing new:
    "nothing to do" in seconds. Anything new: a full run and a new registered
    version (a challenger).
    """
    cfg = params_or_exit()
    preflight_or_exit(cfg, push=push)
    apply_env_defaults()
    from transferline import runguard

    use_local_server(start=cfg.orchestrate.local_server)
    from transferline.runlock import run_lock

    runguard.start()
    with _run_errors(cfg.tracking.uri), run_lock(cfg.orchestrate.lock_wait_seconds), ctrl_c_exits():
        from flows.check import check as check_flow

        _quiet_user_errors()

        with no_flow_heartbeats():
            result = check_flow(push_remote=push)
    if as_json:
        print_json(result)
        return
    if result["action"] != "ran":
        console.print(f"{result['action']}: sources and params unchanged, every stage up to date "
                      f"(checked in {result['seconds']:.2f} s)")
        return
    console.print("changed since the last run: " + "; ".join(result["changes"]))
    _print_summary(result["pipeline"])


@app.command()
def deploy(
    name: str = typer.Option(None, help="Deployment name (default: this folder's name)."),
    from_git: str = typer.Option(None, "--from-git", metavar="URL[@REF]",
                                 help="Run from this git repository instead of this folder, for workers on other "
                                 "hosts: REF is a full commit sha (pinned) or a branch (followed); without @REF, "
                                 "this checkout's HEAD commit (push it first)."),
) -> None:
    """Register the pipeline and the check as deployments on a Prefect server.

    Deployments `transferline/NAME` (cron orchestrate.pipeline_cron) and
    `transferline-check/NAME` (cron orchestrate.check_cron) run from this folder
    on the process work pool orchestrate.work_pool, all read from params.yaml
    (the file the deployed runs read). Needs PREFECT_API_URL; the
    whole path (see README, "Scheduled and data-triggered runs"):

    prefect server start --host 127.0.0.1 --port 4200

    export PREFECT_API_URL=http://127.0.0.1:4200/api

    prefect work-pool create transferline --type process

    transferline deploy

    prefect worker start --pool transferline
    """
    import os

    cfg = params_or_exit()
    if not os.environ.get("PREFECT_API_URL"):
        console.print("[red]error:[/] PREFECT_API_URL is not set; start a server (prefect server start --host "
                      "127.0.0.1) and export PREFECT_API_URL=http://127.0.0.1:4200/api")
        raise typer.Exit(2)
    apply_env_defaults()
    from flows.deploy import DeployError, parse_git_source
    from flows.deploy import deploy as deploy_flows

    name = name or Path.cwd().resolve().name
    try:
        git = parse_git_source(from_git, Path.cwd()) if from_git else None
        ids = deploy_flows(cfg.orchestrate, Path.cwd(), name, git)
    except DeployError as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(1) from None
    o = cfg.orchestrate
    crons = {"transferline": o.pipeline_cron, "transferline-check": o.check_cron}
    for full_name, dep_id in ids.items():
        when = crons[full_name.split("/")[0]]
        Console().print(f"{full_name}  ({dep_id})  schedule: {when + ' ' + o.timezone if when else 'none'}")
    if git:
        console.print(f"source: {git.url} at {git.commit or 'branch ' + git.branch}; a worker needs git, uv and "
                      "this project's environment on PATH, and the DVC remote's credentials")
    console.print(f"start a worker: prefect worker start --pool {o.work_pool}\n"
                  f"run one now:    prefect deployment run {next(iter(ids))}")


app.command()(init.init)
# The registry commands, then the experiment group: the order `transferline --help` lists them in.
app.command()(registry.promote)
app.command()(registry.rollback)
app.command()(registry.history)
app.command()(registry.lineage)
app.command()(card.card)
app.command()(card.ui)
app.command()(predict.predict)
app.add_typer(experiment.app, name="experiment")
app.add_typer(server.app, name="server")


def main() -> None:
    """The `transferline` command: the app, then a quick exit (transferline.env.exit_fast)."""
    exit_fast(app)
