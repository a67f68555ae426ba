"""Experiment trials as Prefect mapped tasks, each in its own Python process
(its own torch threads), each a nested MLflow run of the experiment's parent
run. A trial is a JSON spec: the trial's params (params.yaml layout), which
models to train, the module whose `run_trial` runs it, and the project folder
it runs in.

`orchestrate.trial_runner` picks where the tasks run: `process` (a thread pool
on this host, `experiments.<modality>.workers` at once) or `ray` (prefect-ray's
RayTaskRunner: a Ray instance started for the run, or the cluster at
`orchestrate.ray_address`). On a cluster every node needs the same environment
and the project folder at the same path (a shared disk): a trial reads the
pipeline's data there and writes into its own folder below it.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from transferline.config import Params
from transferline.experiments import WORK, ExperimentError
from transferline.io import read_json, write_json

log = logging.getLogger(__name__)


def trial_spec(module: str, name: str, params: Params, inits: tuple[str, ...], pretrain: bool = False,
               **log_params) -> dict:
    """What a trial task needs, as plain JSON-able values; `module` runs it (`module.run_trial`)."""
    return {"module": module, "name": name, "params": params.to_raw(), "inits": list(inits),
            "pretrain": pretrain, "log_params": log_params}


def _run_in_process(spec: dict, threads: int) -> dict[str, dict]:
    """Run one trial in a fresh Python process (in the project folder, its own torch threads); its results."""
    root = Path(spec["root"])
    folder = root / WORK / spec["name"]
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "spec.json", spec)
    result = folder / "result.json"
    result.unlink(missing_ok=True)
    env = {**os.environ, "TRANSFERLINE_TRIAL_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-m", "transferline.experiments.trials", str(folder / "spec.json")],
                          cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    (folder / "trial.log").write_text(proc.stderr)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise ExperimentError(f"trial {spec['name']} failed (log: {folder / 'trial.log'}):\n{tail}")
    return read_json(result)


def _trial_task():
    """The Prefect task, built on first use (importing Prefect costs seconds)."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    @task(name="trial", task_run_name="{spec[name]}", cache_policy=NO_CACHE)
    def trial(spec: dict, parent_run_id: str, experiment_id: str, threads: int, tracking_uri: str) -> dict[str, dict]:
        """One trial, recorded as a nested MLflow run of the experiment's parent run."""
        from mlflow import MlflowClient
        from mlflow.entities import Metric, Param

        # explicit: a Ray worker does not inherit the driver's environment
        client = MlflowClient(tracking_uri=tracking_uri)
        run = client.create_run(experiment_id, run_name=spec["name"],
                                tags={"mlflow.parentRunId": parent_run_id, "trial": spec["name"], **_where()})
        run_id = run.info.run_id
        try:
            results = _run_in_process(spec, threads)
        except Exception:
            client.set_terminated(run_id, "FAILED")
            raise
        now = int(time.time() * 1000)
        metrics = [Metric(re.sub(r"[^\w./: -]+", "_", k if init.startswith("_") else f"{init}.{k}"), float(v), now, 0)
                   for init, res in results.items() for k, v in res.items() if isinstance(v, (int, float))]
        client.log_batch(run_id, metrics=metrics,
                         params=[Param(k, str(v)) for k, v in spec["log_params"].items()])
        client.set_terminated(run_id, "FINISHED")
        return results

    return trial


def _where() -> dict[str, str]:
    """Tags naming where a trial ran: the host, and the Ray node when on Ray."""
    tags = {"host": socket.gethostname()}
    if "ray" in sys.modules:  # imported by the Ray worker that runs this task
        import ray

        if ray.is_initialized():
            tags["ray_node"] = ray.get_runtime_context().get_node_id()
    return tags


def _task_runner(params: Params, workers: int):
    """The Prefect task runner of orchestrate.trial_runner."""
    cfg = params.orchestrate
    if cfg.trial_runner == "ray":
        from prefect_ray import RayTaskRunner

        if cfg.ray_address:
            return RayTaskRunner(address=cfg.ray_address)
        # a Ray instance for this run only: no dashboard (a web server and a dozen agents we do not use)
        return RayTaskRunner(init_kwargs={"num_cpus": os.cpu_count() or 1, "include_dashboard": False})
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=workers)


def _absolute(uri: str) -> str:
    """A relative sqlite:/// URI made absolute, so a worker elsewhere on the shared disk finds the file."""
    path = uri.removeprefix("sqlite:///")
    if uri.startswith("sqlite:///") and path and not path.startswith("/") and path != ":memory:":
        return f"sqlite:///{Path(path).resolve()}"
    return uri


def run_trials(kind: str, specs: list[dict], params: Params) -> tuple[list[dict[str, dict]], str]:
    """Run the trials as one Prefect flow run of mapped tasks, under one parent MLflow run
    named `kind`; return (results in spec order, parent run id). The parent run stays open
    for the caller to attach tables to: the caller ends it with `end_parent`."""
    import mlflow
    from prefect import flow, unmapped

    from transferline import tracking

    workers = params.values.experiments.workers
    threads = max(1, (os.cpu_count() or 1) // workers)
    runner = params.orchestrate.trial_runner
    trial = _trial_task()
    specs = [{**spec, "root": str(Path.cwd())} for spec in specs]

    @flow(name="experiment", flow_run_name=kind, task_runner=_task_runner(params, workers))
    def experiment(specs: list[dict], parent_run_id: str, experiment_id: str, uri: str) -> list[dict[str, dict]]:
        args = (specs, unmapped(parent_run_id), unmapped(experiment_id), unmapped(threads), unmapped(uri))
        if runner == "ray":
            from prefect_ray.context import remote_options

            # Ray reserves a core per torch thread and spreads the trials over the nodes
            with remote_options(num_cpus=threads, scheduling_strategy="SPREAD"):
                futures = trial.map(*args)
        else:
            futures = trial.map(*args)
        return [f.result() for f in futures]

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect API call otherwise
    tracking.configure(params.tracking)
    parent = mlflow.start_run(run_name=kind)
    log.info("%s: %d trials on %s, %d at a time, %d torch threads each", kind, len(specs), runner,
             workers, threads)
    try:
        results = experiment(specs, parent.info.run_id, parent.info.experiment_id, _absolute(mlflow.get_tracking_uri()))
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    return results, parent.info.run_id


def end_parent(out) -> None:
    """Attach the tables to the parent run and close it."""
    import mlflow

    mlflow.log_artifacts(str(out), "experiments")
    mlflow.end_run()


def _trial_main(spec_path: str) -> None:
    """Entry of a trial's own process: `python -m transferline.experiments.trials SPEC.json`."""
    import importlib

    import torch

    from transferline.config import parse_params

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    torch.set_num_threads(int(os.environ.get("TRANSFERLINE_TRIAL_THREADS", "1")))
    spec = read_json(spec_path)
    params = parse_params(spec["params"])
    run_trial = importlib.import_module(spec["module"]).run_trial
    results = run_trial(spec["name"], params, tuple(spec["inits"]), pretrain=spec["pretrain"])
    write_json(Path(spec_path).with_name("result.json"), results)


if __name__ == "__main__":
    _trial_main(sys.argv[1])
