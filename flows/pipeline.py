"""The transferline pipeline as a Prefect flow.

The flow only wires stages: for each stage in dvc.yaml's order it asks DVC to
reproduce that one stage (DVC decides whether it is stale), then records it
as a nested MLflow run under one parent run per pipeline run. Tasks pass
stage names and small results, never data or models.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect.context import get_run_context

from transferline.config import load_params
from transferline.dvcrun import FLOW_RUN_ENV, RUN_ID_ENV, STAGES, StageResult, dag_stages, repro_stage
from transferline.runlog import log_stage



@task(name="stage")
def run_stage(stage: str, parent_run_id: str, experiment_id: str, params_path: str) -> StageResult:
    """Reproduce one DVC stage and record it as a nested MLflow run."""
    from mlflow import MlflowClient

    logger = get_run_logger()
    client = MlflowClient()
    child = client.create_run(experiment_id, run_name=stage, tags={"mlflow.parentRunId": parent_run_id, "stage": stage})
    run_id = child.info.run_id
    try:
        from prefect.runtime import flow_run

        result = repro_stage(stage, env={RUN_ID_ENV: run_id, FLOW_RUN_ENV: str(flow_run.id or "")})
        raw = yaml.safe_load(Path(params_path).read_text())
        log_stage(client, run_id, stage, raw, result.ran, result.seconds)
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    logger.info("%s: %s in %.1f s", stage, "ran" if result.ran else "skipped (up to date)", result.seconds)
    return result


@task(name="push", retries=2, retry_delay_seconds=5)
def push() -> None:
    """Send data and checkpoints to the DVC remote."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "dvc", "push", "--quiet"], check=True)


@flow(name="transferline", log_prints=True)
def pipeline(until: str | None = None, params_path: str = "params.yaml", push_remote: bool = True) -> dict:
    """ingest -> validate -> split -> preprocess -> pretrain -> finetune -> evaluate -> register -> promote."""
    import mlflow

    from transferline import tracking

    params = load_params(params_path)  # fail before any work
    stages = list(STAGES) if until is None else list(STAGES[: STAGES.index(until) + 1])
    experiment_id = tracking.configure(params.tracking)
    flow_run_id = str(get_run_context().flow_run.id)
    t0 = time.perf_counter()
    with mlflow.start_run(run_name="pipeline", tags={"prefect.flow_run_id": flow_run_id, **tracking.git_info()}) as run:
        mlflow.log_param("until", until or STAGES[-1])
        results = [run_stage.with_options(name=s)(s, run.info.run_id, experiment_id, params_path) for s in stages]
        if push_remote and until is None:
            push()
        mlflow.set_tags(tracking.dvc_hashes())
        summary = {
            "mlflow_run_id": run.info.run_id,
            "prefect_flow_run_id": flow_run_id,
            "stages": [{"stage": r.stage, "ran": r.ran, "seconds": r.seconds} for r in results],
            "ran": [r.stage for r in results if r.ran],
            "skipped": [r.stage for r in results if not r.ran],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        mlflow.log_metric("pipeline_seconds", summary["seconds"])
    return summary


def check_stage_order() -> None:
    """The flow's stage order must be dvc.yaml's."""
    if tuple(dag_stages()) != STAGES:
        raise RuntimeError(f"transferline/dvcrun.py STAGES {STAGES} differ from dvc.yaml {dag_stages()}")


if __name__ == "__main__":
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    print(pipeline())
