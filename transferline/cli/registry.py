"""The registry commands: promote (the gate), rollback, history, lineage.

Registered on the app in transferline/cli/__init__.py. Each imports MLflow
(through transferline.promotion, champion, lineage, tracking) only when it runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from transferline.cli.common import console, params_or_exit, tracking_or_exit
from transferline.env import apply_env_defaults

NARROW = 110  # `history` prints a table from this many columns, a block per move below it (at 80 the reason took 7 lines)


def _registry_call(fn, *args):
    """Run a registry action; its known errors become one red line and exit 1."""
    import logging

    from transferline.champion import PromotionError
    from transferline.errors import StageError
    from transferline.lineage import LineageError
    from transferline.locks import LockTimeout

    logging.basicConfig(level=logging.INFO, format="[promote] %(message)s")
    try:
        return fn(*args)
    except (PromotionError, StageError, LineageError, LockTimeout) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(1) from None


def promote(
    version: str = typer.Option(None, help="Challenger version (default: the newest registered version)."),
    force: bool = typer.Option(False, "--force", help="Make VERSION champion without the gate (needs --reason)."),
    reason: str = typer.Option(None, help="Why; required with --force, recorded in the history."),
    from_experiment: str = typer.Option(None, "--from-experiment", metavar="NAME", help="Apply DVC experiment "
                                        "NAME (dvc exp apply), then register its model and gate it."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of a table."),
    params: Path = typer.Option(Path("params.yaml"), help="Parameters file."),
) -> None:
    """Run the champion/challenger gate now.

    The challenger and the current champion are both scored on the current test
    split (${paths.split}) as MLflow pyfunc models; `champion` moves only if the
    challenger passes every threshold and margin in params.yaml `promote`.
    With --force the gate is skipped and the move is recorded with its reason.
    """
    if force and (not version or not reason):
        console.print("[red]error:[/] --force needs --version and --reason")
        raise typer.Exit(2)
    cfg = params_or_exit(params)
    tracking_or_exit(cfg)
    apply_env_defaults()
    from transferline import champion, promotion

    if from_experiment:
        report = _from_experiment(from_experiment, cfg)
        sys.stdout.write(json.dumps(report, indent=2) + "\n") if as_json else Console().print(promotion.markdown(report))
        return
    if force:
        entry = _registry_call(champion.force_promote, cfg, version, reason)
        console.print(f"champion forced: version {entry['from']} -> {entry['to']} ({entry['reason']})")
        return
    import importlib

    modality = importlib.import_module(f"transferline.{cfg.modality}.promote")  # its current test split
    test = _registry_call(modality.test_set, cfg.paths)
    report = _registry_call(promotion.run_gate, cfg, test, version)
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        Console().print(promotion.markdown(report))


def _from_experiment(name: str, cfg) -> dict:
    """`dvc exp apply NAME` (the workspace becomes the experiment: params, dvc.lock, outputs), then the
    register and promote stages the experiment skipped (transferline/dvcexp.py), under the run lock."""
    import subprocess

    from transferline.dvcrun import StageFailed, repro_stage
    from transferline.io import read_json
    from transferline.runlock import RunLockBusy, run_lock

    try:
        with run_lock(cfg.orchestrate.lock_wait_seconds):
            done = subprocess.run([sys.executable, "-m", "dvc", "exp", "apply", name], capture_output=True, text=True)
            if done.returncode != 0:
                console.print(f"[red]error:[/] dvc exp apply {name} failed (see `dvc exp show`): "
                              f"{done.stderr.strip()[-800:]}")
                raise typer.Exit(1)
            console.print(f"applied experiment {name} to the workspace (dvc exp apply); registering and gating it")
            for stage in ("register", "promote"):
                repro_stage(stage)
    except (StageFailed, RunLockBusy) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(1) from None
    return read_json(params_or_exit().paths.report("promote"))


def rollback(
    reason: str = typer.Option(..., help="Why the current champion is withdrawn (recorded in the history)."),
    params: Path = typer.Option(Path("params.yaml"), help="Parameters file."),
) -> None:
    """Move `champion` back to the previous champion."""
    cfg = params_or_exit(params)
    tracking_or_exit(cfg)
    apply_env_defaults()
    from transferline import champion

    entry = _registry_call(champion.rollback, cfg, reason)
    console.print(f"champion rolled back: version {entry['from']} -> {entry['to']} ({entry['reason']})")


def history(
    as_json: bool = typer.Option(False, "--json", help="Print the moves as JSON."),
    params: Path = typer.Option(Path("params.yaml"), help="Parameters file."),
) -> None:
    """Every move of the `champion` alias: when, why, by whom, with the figures."""
    cfg = params_or_exit(params)
    tracking_or_exit(cfg)
    from transferline.readcache import cached

    def read() -> dict:
        apply_env_defaults()
        from transferline import champion

        return _registry_call(champion.history, cfg)

    info = cached(cfg.tracking, f"history {cfg.model_name}", read)
    if as_json:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
        return
    title = f"{info['model']}: champion is version {info['champion'] or 'none'}"
    rows = []
    for m in info["moves"]:
        new, old = m.get("challenger") or {}, m.get("champion") or {}
        acc = f"{new.get('accuracy', '-')} / {old.get('accuracy', '-')}" if new else "-"
        when = m["at"].replace("T", " ").removesuffix("+00:00")  # the header says UTC; a space lets it wrap
        rows.append((when, m["action"], str(m["from"] or "-"), m["to"], acc, m["reason"], m["by"]))
    console = Console()
    if console.width < NARROW:  # seven columns would fold every word: one block per move instead
        console.print(title, highlight=False)
        for when, action, from_, to, acc, reason, by in rows:
            console.print(f"\n{when} UTC  {action}  {from_} -> {to}  by {by}\n  accuracy (new/old): {acc}\n  {reason}",
                          highlight=False, markup=False)
        return
    table = Table(title=title)
    # Down to NARROW columns the reason wraps; a move's time and action are never cut to "first_champ…"
    for header in ("when (UTC)", "action", "from", "to", "accuracy (new/old)", "reason", "by"):
        table.add_column(header, overflow="fold", min_width=10 if header == "when (UTC)" else None,
                         no_wrap=header in ("action", "from", "to"))
    for row in rows:
        table.add_row(*row)
    console.print(table)


def lineage(
    ref: str = typer.Argument(None, help="NAME@ALIAS or NAME/VERSION (default: register.model_name@champion)."),
    restore: bool = typer.Option(False, "--restore", help="Check out that version's exact data and checkpoints "
                                 "with DVC (the current dvc.lock is saved in .transferline/lineage/)."),
    force: bool = typer.Option(False, "--force", help="With --restore: overwrite outs holding unrecorded changes."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    params: Path = typer.Option(Path("params.yaml"), help="Parameters file."),
) -> None:
    """Where a model version came from: git commit, DVC hashes, params, MLflow and Prefect runs."""
    cfg = params_or_exit(params)
    tracking_or_exit(cfg)
    from transferline.readcache import cached

    ref = ref or f"{cfg.model_name}@champion"

    def described() -> dict:
        apply_env_defaults()
        from transferline import lineage as lin
        from transferline.storeview import read_registry

        return read_registry(cfg.tracking, lambda client: _registry_call(lin.describe, client, ref))

    def restored() -> dict:
        apply_env_defaults()
        import mlflow

        from transferline import lineage as lin
        from transferline import tracking

        tracking.configure(cfg.tracking)
        client = mlflow.MlflowClient()
        return {**_registry_call(lin.describe, client, ref), "restore": _registry_call(lin.restore, client, ref, force)}

    # --restore checks files out: never from the cache.
    info = restored() if restore else cached(cfg.tracking, f"lineage {ref}", described)
    if as_json:
        sys.stdout.write(json.dumps(info, indent=2, default=str) + "\n")
        return
    out = Console()
    out.print(f"[bold]{info['model']} version {info['version']}[/] aliases: {', '.join(info['aliases']) or '-'}")
    for group in ("code", "data", "runs", "promotion", "params"):
        out.print(f"[bold]{group}[/]")
        for k, v in info[group].items():
            out.print(f"  {k}: {v}")
    if restore:
        r = info["restore"]
        out.print(f"[green]restored[/] {', '.join(r['restored'])} to version {r['version']}'s hashes; "
                  f"dvc.lock is now that version's (yours: {r['dvc_lock_backup']}). "
                  f"For its code: git checkout {r['git_commit']}")
