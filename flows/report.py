"""What a pipeline run did, published as Prefect artifacts.

At the end of every run, success or failure: a markdown summary (stages run,
skipped or not reached, test metrics, transfer gain, the promotion gate's
decision, a link to the MLflow run) and two tables (stages, metrics). While
the run goes, a progress artifact counts finished stages.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from uuid import UUID

from transferline.candidates import candidates_table
from transferline.dvcrun import RESTORED, outcome
from transferline.metrics import gain_statement
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

METRICS = Path("reports/metrics.json")
REGISTER = Path("reports/register.json")
CANDIDATES = Path("reports/candidates.json")  # the finetune stage's starting points and its choice
PROMOTE = Path("reports/promote.json")  # written by the promote stage when the project has one

REPORT_KEY = "transferline-report"
STAGES_KEY = "transferline-stages"
METRICS_KEY = "transferline-metrics"


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def mlflow_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """Markdown pointing at the run in the MLflow UI."""
    fragment = f"#/experiments/{experiment_id}/runs/{run_id}"
    if tracking_uri.startswith(("http://", "https://")):
        return f"[MLflow run {run_id}]({tracking_uri.rstrip('/')}/{fragment})"
    return (f"MLflow run `{run_id}`: `mlflow ui --backend-store-uri {tracking_uri}`, then "
            f"[open it](http://127.0.0.1:5000/{fragment})")


def gate_line() -> str:
    promote = _read(PROMOTE)
    if promote is None:
        return "no gate"
    def side(figures: dict | None) -> str:
        if not figures:
            return "none"
        rest = ", ".join(f"{k} {v}" for k, v in figures.items() if k != "version")
        return f"version {figures.get('version')} ({rest})"

    return (f"**{promote.get('decision')}**: {promote.get('reason')} "
            f"(challenger {side(promote.get('challenger'))}; champion {side(promote.get('champion'))})")


def stage_rows(stages: list[str], results: list[dict], failed: str | None) -> list[dict[str, Any]]:
    done = {r["stage"]: r for r in results}
    rows = []
    for stage in stages:
        if stage in done:
            status = outcome(done[stage]["ran"], done[stage].get("restored", False))
            rows.append({"stage": stage, "status": status, "seconds": done[stage]["seconds"]})
        else:
            rows.append({"stage": stage, "status": "failed" if stage == failed else "not reached", "seconds": None})
    return rows


def metric_rows() -> list[dict[str, Any]]:
    metrics = _read(METRICS) or {}
    rows = []
    for model in ("finetune", "scratch", "transfer_gain"):
        for name, value in (metrics.get(model) or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                rows.append({"model": model, "metric": name, "value": round(float(value), 4)})
    return rows


def markdown(stages: list[str], results: list[dict], link: str, seconds: float,
             error: str | None = None, failed: str | None = None) -> str:
    head = "# transferline run: " + ("FAILED" if error else "completed") + f" in {seconds:.1f} s"
    lines = [head, ""]
    if error:
        lines += ["**Error**:", "", "```", error.strip(), "```", "",
                  "The MLflow run is marked FAILED; the registry was not changed by this run.", ""]
    rows = stage_rows(stages, results, failed)
    ran = [r["stage"] for r in rows if r["status"] in ("ran", RESTORED)]  # as DVC counts: it reproduced them
    skipped = [r["stage"] for r in rows if r["status"].startswith("skipped")]
    lines += [f"- ran: {', '.join(ran) or 'nothing (all up to date)'}",
              f"- skipped: {', '.join(skipped) or '-'}"]
    rest = [r["stage"] for r in rows if r["status"] in ("failed", "not reached")]
    if rest:
        lines.append(f"- failed / not reached: {', '.join(rest)}")
    lines += ["", "| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {r['stage']} | {r['status']} | {'' if r['seconds'] is None else r['seconds']} |" for r in rows]
    metrics = _read(METRICS)
    if metrics and not error:
        ft, sc, gain = metrics.get("finetune", {}), metrics.get("scratch", {}), metrics.get("transfer_gain", {})
        lines += ["", "## Test metrics", "", "| model | accuracy | macro-F1 |", "|---|---|---|",
                  f"| fine-tuned | {ft.get('accuracy', float('nan')):.4f} | {ft.get('macro_f1', float('nan')):.4f} |",
                  f"| scratch | {sc.get('accuracy', float('nan')):.4f} | {sc.get('macro_f1', float('nan')):.4f} |",
                  f"| **transfer gain** | **{gain.get('accuracy', float('nan')):+.4f}** | "
                  f"{gain.get('macro_f1', float('nan')):+.4f} |"]
        if gain:
            statement = gain_statement(metrics)
            lines += ["", statement[:1].upper() + statement[1:]]
    candidates = _read(CANDIDATES)
    if candidates and not error:
        test = {c: s.get("accuracy") for c, s in (metrics or {}).get("candidates", {}).items()}
        lines += ["", "## Starting points (chosen on validation)", "", f"**{candidates['verdict']}**", "",
                  *candidates_table(candidates, test)]
    register = _read(REGISTER)
    if register and not error:
        lines += ["", f"Registered: {register.get('name')} version {register.get('version')}; "
                  f"champion is version {register.get('champion_version')}."]
    lines += ["", f"Gate decision: {gate_line() if not error else 'no decision (run failed)'}", "", link]
    return "\n".join(lines) + "\n"


def publish(stages: list[str], results: list[dict], link: str, seconds: float,
            error: str | None = None, failed: str | None = None) -> None:
    """Create the run's markdown summary and tables in the Prefect API."""
    try:
        _publish(stages, results, link, seconds, error, failed)
    except Exception as err:  # a report must never hide the run's own outcome
        logging.getLogger(__name__).warning("could not publish the run report: %s", err)


def _publish(stages: list[str], results: list[dict], link: str, seconds: float,
             error: str | None, failed: str | None) -> None:
    create_markdown_artifact(markdown(stages, results, link, seconds, error, failed), key=REPORT_KEY,
                             description="What this transferline run did")
    create_table_artifact(stage_rows(stages, results, failed), key=STAGES_KEY,
                          description="Stages run, skipped (up to date) or not reached")
    rows = metric_rows()
    if rows and not error:
        create_table_artifact(rows, key=METRICS_KEY, description="Test metrics and transfer gain")


def start_progress(total: int) -> UUID:
    return create_progress_artifact(0.0, description=f"transferline stages done (of {total})")


def advance(artifact_id: UUID, done: int, total: int) -> None:
    update_progress_artifact(artifact_id, 100.0 * done / total)
