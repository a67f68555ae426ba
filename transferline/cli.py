"""`transferline`: run the pipeline and ask what the registry holds.

Run it from the project root (the folder with dvc.yaml and params.yaml).
"""

from __future__ import annotations

import contextlib
import enum
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from transferline.config import ParamsError, load_params
from transferline.dvcrun import STAGES
from transferline.env import apply_env_defaults

app = typer.Typer(
    help="transferline: pretrain on a large source set, fine-tune on a small target task, "
    "prove the gain against a scratch baseline, and register the winner.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)

Stage = enum.Enum("Stage", {s: s for s in STAGES})
Modality = enum.Enum("Modality", {m: m for m in ("image", "text")})


def _params_or_exit(path: Path):
    if not Path("dvc.yaml").is_file():
        console.print("[red]error:[/] no dvc.yaml here; run transferline from the project root")
        raise typer.Exit(2)
    try:
        return load_params(path)
    except ParamsError as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None


@app.command()
def run(
    until: Stage = typer.Option(None, help="Stop after this stage (default: run every stage)."),
    params: Path = typer.Option(Path("params.yaml"), help="Parameters file."),
    push: bool = typer.Option(True, help="Push data and checkpoints to the DVC remote after a full run."),
    modality: Modality = typer.Option(None, help="Switch the modality first: writes `modality:` into the "
                                      "params file (so DVC sees the change) and keeps it for later runs."),
) -> None:
    """Run the pipeline as a Prefect flow; DVC skips every stage that is up to date.

    Stages: ingest, validate, split, preprocess, pretrain, finetune (+ scratch
    baseline), evaluate, register. Every run is one MLflow run with a nested
    run per stage.
    """
    if modality is not None:
        from transferline.text.switch import set_modality

        set_modality(params, modality.value)
    cfg = _params_or_exit(params)
    apply_env_defaults()
    from transferline.runlock import run_lock

    with _run_errors(), run_lock(cfg.orchestrate.lock_wait_seconds):  # before Prefect starts: fail fast
        from flows.pipeline import pipeline

        summary = pipeline(until=until.value if until else None, params_path=str(params), push_remote=push)
    _print_summary(summary)


@contextlib.contextmanager
def _run_errors() -> Iterator[None]:
    """A failed run ends with one clear error line (the stage's own message) and exit 1."""
    from tasks._stage import StageError
    from transferline.dvcrun import StageFailed
    from transferline.runlock import RunLockBusy

    try:
        yield
    except (StageFailed, StageError, RunLockBusy) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(1) from None
    except TimeoutError as err:
        console.print(f"[red]error:[/] {err} (limits: params.yaml orchestrate.*_timeout_seconds)")
        raise typer.Exit(1) from None


def _print_summary(summary: dict) -> None:
    table = Table("stage", "status", "seconds", title="transferline run")
    for row in summary["stages"]:
        table.add_row(row["stage"], "ran" if row["ran"] else "skipped (up to date)", f"{row['seconds']:.1f}")
    console.print(table)
    console.print(f"ran: {', '.join(summary['ran']) or 'nothing (all up to date)'}")
    console.print(f"skipped: {', '.join(summary['skipped']) or '-'}")
    metrics = Path("reports/metrics.json")
    if "evaluate" in summary["ran"] + summary["skipped"] and metrics.is_file():
        m = json.loads(metrics.read_text())
        console.print(
            f"test accuracy: fine-tuned {m['finetune']['accuracy']:.4f}, scratch {m['scratch']['accuracy']:.4f}, "
            f"transfer gain {m['transfer_gain']['accuracy']:+.4f}"
        )
    console.print(f"done in {summary['seconds']:.1f} s; MLflow run {summary['mlflow_run_id']}")


@app.command()
def status(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (keys: champion, last_run)."),
    params: Path = typer.Option(Path("params.yaml"), help="Parameters file."),
) -> None:
    """Show the current champion, its metrics, and the last pipeline run."""
    cfg = _params_or_exit(params)
    apply_env_defaults()
    from transferline.status import status as read_status

    info = read_status(cfg)
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


@app.command()
def check(
    params: Path = typer.Option(Path("params.yaml"), help="Parameters file."),
    push: bool = typer.Option(True, help="Push data and checkpoints to the DVC remote after a run."),
) -> None:
    """Run the pipeline only if the data or params changed (the data-triggered check).

    Re-reads the sources (re-fetches the pinned built-in sets and checks their
    sha256; DVC hashes a folder target), then asks `dvc status`. Nothing new:
    "nothing to do" in seconds. Anything new: a full run and a new registered
    version (a challenger).
    """
    cfg = _params_or_exit(params)
    apply_env_defaults()
    from transferline.runlock import run_lock

    with _run_errors(), run_lock(cfg.orchestrate.lock_wait_seconds):
        from flows.check import check as check_flow

        result = check_flow(params_path=str(params), push_remote=push)
    if result["action"] != "ran":
        console.print(f"{result['action']}: sources and params unchanged, every stage up to date "
                      f"(checked in {result['seconds']:.2f} s)")
        return
    console.print("changed since the last run: " + "; ".join(result["changes"]))
    _print_summary(result["pipeline"])


@app.command()
def deploy(
    params: Path = typer.Option(Path("params.yaml"), help="Parameters file (orchestrate section)."),
    name: str = typer.Option(None, help="Deployment name (default: this folder's name)."),
) -> None:
    """Register the pipeline and the check as deployments on a Prefect server.

    Deployments `transferline/NAME` (cron orchestrate.pipeline_cron) and
    `transferline-check/NAME` (cron orchestrate.check_cron) run from this folder
    on the process work pool orchestrate.work_pool. Needs PREFECT_API_URL; the
    whole path (see README, "Scheduled and data-triggered runs"):

    prefect server start --host 127.0.0.1 --port 4200

    export PREFECT_API_URL=http://127.0.0.1:4200/api

    prefect work-pool create transferline --type process

    transferline deploy

    prefect worker start --pool transferline
    """
    import os

    cfg = _params_or_exit(params)
    if not os.environ.get("PREFECT_API_URL"):
        console.print("[red]error:[/] PREFECT_API_URL is not set; start a server (prefect server start --host "
                      "127.0.0.1) and export PREFECT_API_URL=http://127.0.0.1:4200/api")
        raise typer.Exit(2)
    apply_env_defaults()
    from flows.deploy import DeployError
    from flows.deploy import deploy as deploy_flows

    name = name or Path.cwd().resolve().name
    try:
        ids = deploy_flows(cfg.orchestrate, Path.cwd(), name, str(params))
    except DeployError as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(1) from None
    o = cfg.orchestrate
    crons = {"transferline": o.pipeline_cron, "transferline-check": o.check_cron}
    for full_name, dep_id in ids.items():
        when = crons[full_name.split("/")[0]]
        Console().print(f"{full_name}  ({dep_id})  schedule: {when + ' ' + o.timezone if when else 'none'}")
    console.print(f"start a worker: prefect worker start --pool {o.work_pool}\n"
                  f"run one now:    prefect deployment run {next(iter(ids))}")


experiment_app = typer.Typer(help="Experiments beside the pipeline (need `transferline run --until pretrain`).",
                             no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")


def _experiment(name: str, params: Path) -> None:
    cfg = _params_or_exit(params)
    apply_env_defaults()
    import logging

    from transferline import experiments

    logging.basicConfig(level=logging.INFO, format=f"[{name}] %(message)s")
    try:
        getattr(experiments, name.replace("-", "_"))(cfg)
    except experiments.ExperimentError as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(1) from None
    table = experiments.OUT / f"{name.replace('-', '_')}.md"
    Console().print(table.read_text())
    console.print(f"written to {experiments.OUT}/")


@experiment_app.command("label-efficiency")
def label_efficiency(params: Path = typer.Option(Path("params.yaml"), help="Parameters file.")) -> None:
    """Fine-tuned vs scratch test accuracy at every label budget and seed in
    params.yaml `experiments` (budgets, seeds): a table and a plot with spread."""
    _experiment("label-efficiency", params)


@experiment_app.command("strategies")
def strategies(params: Path = typer.Option(Path("params.yaml"), help="Parameters file.")) -> None:
    """Test accuracy and train time of each fine-tuning strategy in params.yaml
    `experiments.strategies`, next to the scratch baseline."""
    _experiment("compare-strategies", params)


@experiment_app.command("objectives")
def objectives(params: Path = typer.Option(Path("params.yaml"), help="Parameters file.")) -> None:
    """Pretrain with each objective in params.yaml `experiments.objectives`
    (supervised, denoising, contrastive; optionally with their own pool and
    epochs), fine-tune each on the label budget, and compare the test accuracy
    and the gain over the scratch baseline. Needs only `transferline run --until ingest`."""
    _experiment("objectives", params)


@experiment_app.command("text-models")
def text_models(
    params: Path = typer.Option(Path("params.yaml"), help="Parameters file."),
    trial: list[str] = typer.Option(None, help="Run only this trial (by name; repeatable); the other "
                                    "trials keep their row from the last run."),
) -> None:
    """Test accuracy and train time per epoch of each text model in params.yaml
    `experiments.text_models` (MiniLM full / LoRA, our MLM encoder, scratch, BiLSTM).
    Needs `transferline run --modality text --until pretrain`."""
    cfg = _params_or_exit(params)
    apply_env_defaults()
    import logging

    from transferline import experiments
    from transferline.text.experiment import text_models as run_text_models

    logging.basicConfig(level=logging.INFO, format="[text-models] %(message)s")
    try:
        run_text_models(cfg, trial or None)
    except experiments.ExperimentError as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(1) from None
    Console().print((experiments.OUT / "text_models.md").read_text())
    console.print(f"written to {experiments.OUT}/")


# -- promotion gate, rollback, history, lineage (transferline/promotion.py, champion.py, lineage.py) --

def _registry_call(fn, *args):
    """Run a registry action; its known errors become one red line and exit 1."""
    import logging

    from transferline.lineage import LineageError
    from transferline.locks import LockTimeout
    from transferline.champion import PromotionError

    logging.basicConfig(level=logging.INFO, format="[promote] %(message)s")
    try:
        return fn(*args)
    except (PromotionError, LineageError, LockTimeout) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(1) from None


@app.command()
def promote(
    version: str = typer.Option(None, help="Challenger version (default: the newest registered version)."),
    force: bool = typer.Option(False, "--force", help="Make VERSION champion without the gate (needs --reason)."),
    reason: str = typer.Option(None, help="Why; required with --force, recorded in the history."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of a table."),
    params: Path = typer.Option(Path("params.yaml"), help="Parameters file."),
) -> None:
    """Run the champion/challenger gate now.

    The challenger and the current champion are both scored on the current test
    split (data/split) as MLflow pyfunc models; `champion` moves only if the
    challenger passes every threshold and margin in params.yaml `promote`.
    With --force the gate is skipped and the move is recorded with its reason.
    """
    cfg = _params_or_exit(params)
    apply_env_defaults()
    from transferline import champion, promotion

    if force:
        if not version or not reason:
            console.print("[red]error:[/] --force needs --version and --reason")
            raise typer.Exit(2)
        entry = _registry_call(champion.force_promote, cfg, version, reason)
        console.print(f"champion forced: version {entry['from']} -> {entry['to']} ({entry['reason']})")
        return
    report = _registry_call(promotion.run_gate, cfg, version)
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        Console().print(promotion.markdown(report))


@app.command()
def rollback(
    reason: str = typer.Option(..., help="Why the current champion is withdrawn (recorded in the history)."),
    params: Path = typer.Option(Path("params.yaml"), help="Parameters file."),
) -> None:
    """Move `champion` back to the previous champion."""
    cfg = _params_or_exit(params)
    apply_env_defaults()
    from transferline import champion

    entry = _registry_call(champion.rollback, cfg, reason)
    console.print(f"champion rolled back: version {entry['from']} -> {entry['to']} ({entry['reason']})")


@app.command()
def history(
    as_json: bool = typer.Option(False, "--json", help="Print the moves as JSON."),
    params: Path = typer.Option(Path("params.yaml"), help="Parameters file."),
) -> None:
    """Every move of the `champion` alias: when, why, by whom, with the figures."""
    cfg = _params_or_exit(params)
    apply_env_defaults()
    from transferline import champion

    info = _registry_call(champion.history, cfg)
    if as_json:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
        return
    table = Table("when (UTC)", "action", "from", "to", "accuracy (new/old)", "reason", "by",
                  title=f"{info['model']}: champion is version {info['champion'] or 'none'}")
    for m in info["moves"]:
        new, old = m.get("challenger") or {}, m.get("champion") or {}
        acc = f"{new.get('accuracy', '-')} / {old.get('accuracy', '-')}" if new else "-"
        table.add_row(m["at"], m["action"], str(m["from"] or "-"), m["to"], acc, m["reason"], m["by"])
    Console().print(table)


@app.command()
def lineage(
    ref: str = typer.Argument(None, help="NAME@ALIAS or NAME/VERSION (default: register.model_name@champion)."),
    restore: bool = typer.Option(False, "--restore", help="Check out that version's exact data and checkpoints "
                                 "with DVC (the current dvc.lock is saved in .transferline/lineage/)."),
    force: bool = typer.Option(False, "--force", help="With --restore: overwrite outs holding unrecorded changes."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    params: Path = typer.Option(Path("params.yaml"), help="Parameters file."),
) -> None:
    """Where a model version came from: git commit, DVC hashes, params, MLflow and Prefect runs."""
    cfg = _params_or_exit(params)
    apply_env_defaults()
    import mlflow

    from transferline import lineage as lin
    from transferline import tracking

    tracking.configure(cfg.tracking)
    client = mlflow.MlflowClient()
    ref = ref or f"{cfg.model_name}@champion"
    info = _registry_call(lin.describe, client, ref)
    if restore:
        info["restore"] = _registry_call(lin.restore, client, ref, force)
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


if __name__ == "__main__":
    app()
