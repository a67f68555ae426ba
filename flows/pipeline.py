"""The transferline pipeline as a Prefect flow.

The flow only wires stages: it asks DVC once which stages are stale, then for
each stage in dvc.yaml's order either asks DVC to reproduce that one stage (DVC
decides whether it runs; one DVC process serves the whole run,
transferline.dvcrun.DvcProcess) or, when DVC already called it up to date and
nothing upstream ran, records it as skipped without asking DVC again. Every stage,
skipped or not, is a Prefect task and a nested MLflow run under one parent
run per pipeline run. Tasks pass stage names and small results, never data or
models.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context

from flows import report
from flows.policy import push_options, stage_options
from transferline import runguard
from transferline.config import PARAMS_FILE, load_params
from transferline.dvcrun import (STAGES, DvcProcess, StageFailed, StalePlan, StageResult, dag_stages, outcome,
                                start_run, take_prestarted, warm_modality)
from transferline.env import apply_env_defaults, imports_without_gc
from transferline.errors import connection_failure
from transferline.lineage import FLOW_RUN_ENV, RUN_ID_ENV
from transferline.runlock import run_lock
from transferline.runlog import log_stage, read_yaml
from transferline.status import registry_gap



@task(name="dvc-status", cache_policy=NO_CACHE)
def plan(started: Callable[[], StalePlan]) -> StalePlan:
    """Ask DVC once which stages are stale (and how the stages depend on each other); `started`:
    the answer of the status started earlier (transferline.dvcrun.DvcProcess.plan)."""
    found = started()
    get_run_logger().info("dvc status: %s", ", ".join(found.stale) or "every stage up to date")
    return found


def mlflow_end_status(err: BaseException) -> str:
    """How an MLflow run ends when `err` leaves it: KILLED for Ctrl-C (as the runguard ends a
    killed run's runs), FAILED for anything else."""
    return "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"


@task(name="stage", cache_policy=NO_CACHE)  # DVC alone decides what is up to date
def run_stage(stage: str, parent_run_id: str, experiment_id: str, dvc: DvcProcess, check: bool = True,
              force: bool = False) -> StageResult:
    """Reproduce one DVC stage through the run's DVC process (`check`; `force`: even if DVC calls it
    up to date) or record it as up to date; either way a nested MLflow run."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    logger = get_run_logger()
    client = MlflowClient()
    child = client.create_run(experiment_id, run_name=stage, tags={"mlflow.parentRunId": parent_run_id, "stage": stage})
    run_id = child.info.run_id
    try:
        from prefect.runtime import flow_run

        if check or force:
            result = dvc.repro(stage, env={RUN_ID_ENV: run_id, FLOW_RUN_ENV: str(flow_run.id or "")},
                               on_line=logger.info, force=force)
        else:  # DVC said up to date before the run and nothing upstream has run since
            result = StageResult(stage, False, 0.0)
        raw = read_yaml(PARAMS_FILE)  # the values the stage read
        log_stage(client, run_id, stage, raw, result.ran, result.seconds)
    except BaseException as err:  # Ctrl-C too: the stage's run must not stay RUNNING
        with contextlib.suppress(MlflowException):  # best effort: the failure may be the tracking server's
            client.set_terminated(run_id, mlflow_end_status(err))
        raise
    client.set_terminated(run_id, "FINISHED")
    logger.info("%s: %s in %.1f s", stage, outcome(result.ran, result.restored), result.seconds)
    return result


@task(name="push", retries=2, retry_delay_seconds=5)
def push() -> None:
    """Send data and checkpoints to the DVC remote."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "dvc", "push", "--quiet"], capture_output=True, text=True)
    if done.returncode != 0:
        raise StageFailed(f"dvc push failed (check `dvc remote list`): {done.stderr.strip()[-1000:]}")


@flow(name="transferline", log_prints=True)
def pipeline(until: str | None = None, push_remote: bool = True) -> dict:
    """ingest -> validate -> split -> preprocess -> pretrain -> finetune -> evaluate -> register -> promote.

    Reads params.yaml, like every DVC stage it runs: there is no other params file to pass.
    """
    apply_env_defaults()  # a worker starts this flow without the CLI
    params = load_params()  # fail before any work
    stages = list(STAGES) if until is None else list(STAGES[: STAGES.index(until) + 1])
    with run_lock(params.orchestrate.lock_wait_seconds), contextlib.ExitStack() as stack:  # one run at a time
        # started by `transferline run` before Prefect loaded (dvcrun.prestart), else here: either
        # way DVC's status runs on the other core while MLflow loads, and the same DVC process
        # then reproduces the stages
        dvc_process, changed = take_prestarted() or start_run(warm_modality(params))
        stack.enter_context(dvc_process)
        for path in changed:
            get_run_logger().info("changed: %s", path)
        with imports_without_gc():  # MLflow and its SQL store: 4-5 s of CPU
            import mlflow
            from mlflow.exceptions import MlflowException

            from transferline import tracking

            experiment_id = tracking.configure(params.tracking)
        flow_run_id = str(get_run_context().flow_run.id)
        runguard.note_flow_run()  # marked Crashed should the CLI be killed
        t0 = time.perf_counter()
        results: list[StageResult] = []
        progress = report.start_progress(len(stages))
        with mlflow.start_run(run_name="pipeline", tags={"prefect.flow_run_id": flow_run_id, **tracking.git_info()}) as run:
            runguard.note_mlflow_run(run.info.run_id, mlflow.get_tracking_uri())
            link = report.mlflow_link(mlflow.get_tracking_uri(), experiment_id, run.info.run_id)
            try:
                mlflow.log_param("until", until or STAGES[-1])
                stale = plan(dvc_process.plan)
                for s in stages:
                    check = stale.must_check(s, {r.stage for r in results if r.ran})
                    task_ = run_stage.with_options(name=s, **stage_options(s, params.orchestrate))
                    # DVC cannot see a lost registry: re-register what dvc.lock recorded (promote follows)
                    gap = registry_gap(params) if s == "register" else None
                    if gap:
                        get_run_logger().warning("re-registering: %s", gap)
                    results.append(task_(s, run.info.run_id, experiment_id, dvc_process, check, force=bool(gap)))
                    if results[-1].ran or len(results) == len(stages):  # a skip is instant: no update
                        report.advance(progress, len(results), len(stages))
                if push_remote and until is None:
                    push.with_options(**push_options(params.orchestrate))()
            except BaseException as err:
                failed = stages[len(results)] if len(results) < len(stages) else "push"
                message = f"{type(err).__name__}: {err}" if not str(err).startswith("stage ") else str(err)
                if connection_failure(err) is None:  # else the tracking server is gone: nowhere to write
                    with contextlib.suppress(MlflowException):
                        mlflow.set_tag("error", message[:5000])
                # Not after Ctrl-C: it reaches Prefect's ephemeral API too (same process group), and the
                # report would wait a minute on a server gone; the flow run's Crashed state says it
                if not isinstance(err, KeyboardInterrupt):
                    report.publish(stages, [vars(r) for r in results], link, time.perf_counter() - t0, message, failed)
                if isinstance(err, KeyboardInterrupt):  # KILLED, where leaving the block would say FAILED
                    mlflow.end_run("KILLED")
                raise
            mlflow.set_tags(tracking.dvc_hashes())
            summary = {
                "mlflow_run_id": run.info.run_id,
                "prefect_flow_run_id": flow_run_id,
                "stages": [{"stage": r.stage, "ran": r.ran, "seconds": r.seconds, "work_seconds": r.work_seconds,
                            "restored": r.restored}
                           for r in results],
                "ran": [r.stage for r in results if r.ran],
                "skipped": [r.stage for r in results if not r.ran],
                "seconds": round(time.perf_counter() - t0, 1),
            }
            mlflow.log_metric("pipeline_seconds", summary["seconds"])
        report.publish(stages, summary["stages"], link, summary["seconds"])
    return summary


def check_stage_order() -> None:
    """The flow's stage order must be dvc.yaml's."""
    if tuple(dag_stages()) != STAGES:
        raise RuntimeError(f"transferline/dvcrun.py STAGES {STAGES} differ from dvc.yaml {dag_stages()}")


if __name__ == "__main__":
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    print(pipeline())
