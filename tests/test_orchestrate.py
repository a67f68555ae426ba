"""Scheduled and data-triggered runs: a real Prefect server with a process
worker, the check flow, the run lock, failed runs, the DVC remote on a fresh
clone. Everything real: server, worker, DVC, MLflow registry, and the DVC
remote on an S3-compatible object store (moto's server mode on loopback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import MLFLOW_ENV, make_project, tiny_raw_params
from transferline.dvcrun import STAGES
from kit.prefectserver import artifacts, deployment, logs, prefect_cli, process_worker, trigger, wait_for_run
from kit.s3server import CREDENTIALS, s3_server
from test_cli_light import import_chains, who_imported

# Far from now: the server's scheduler must not start runs of its own during the test.
QUIET_CRONS = {"pipeline_cron": "0 3 1 1 *", "check_cron": "30 3 1 1 *", "timezone": "Europe/Berlin"}


def transferline(project: Path, *args: str, env: dict | None = None, wait: bool = True):
    # none of this shell's Prefect settings but the server a test points it at (conftest.shared_prefect)
    full = {k: v for k, v in os.environ.items()
            if k not in MLFLOW_ENV and (not k.startswith("PREFECT_") or k == "PREFECT_API_URL")}
    full.update({"PREFECT_HOME": str(project / ".transferline/prefect"), **(env or {})})
    cmd = [sys.executable, "-m", "transferline.cli", *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=project, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=project, env=full, capture_output=True, text=True, timeout=1200)


def summary_lists(stderr: str) -> tuple[list[str], list[str]]:
    text = " ".join(stderr.split())
    ran = text.split("ran: ")[-1].split(" skipped:")[0]
    skipped = text.split("skipped: ")[-1].split(" test accuracy")[0].split(" done in")[0]
    return ([] if ran.startswith("nothing") else ran.split(", ")), ([] if skipped == "-" else skipped.split(", "))


def registry(project: Path) -> tuple[int, str | None]:
    """(number of registered versions, champion version) in the project's MLflow DB."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project}/.transferline/mlflow.db")
    versions = client.search_model_versions("name='transferline-image'")
    champion = client.get_registered_model("transferline-image").aliases.get("champion")
    return len(versions), None if champion is None else str(champion)


# --- a real server: deploy, worker, trigger; then a fresh clone pulls and skips everything ---------------


def write_images(folder: Path, x: np.ndarray, y: np.ndarray, classes: dict[int, str], start: int) -> None:
    from PIL import Image

    for i, (img, label) in enumerate(zip(x, y)):
        path = folder / classes[int(label)] / f"{start + i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0]).save(path)


CLASSES = {0: "bear", 2: "cat", 9: "zebra"}  # Animal-MNIST labels -> folder names


def target_images(builtin_sets) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Real Animal-MNIST images of three classes: x, y, and two index sets (first run, new data)."""
    x, y = builtin_sets["target"]
    rng = np.random.default_rng(0)
    picks = {c: rng.choice(np.flatnonzero(y == c), 28, replace=False) for c in CLASSES}
    return x, y, np.concatenate([p[:20] for p in picks.values()]), np.concatenate([p[20:] for p in picks.values()])


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


def dvc(cwd: Path, *args: str, env: dict | None = None) -> str:
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def served(tmp_path_factory, builtin_sets, s3, prefect_api):
    """A folder-target project whose first run is a deployment run on a real server (the
    session's: conftest.prefect_api), as are the later runs in it. Its DVC
    remote is the object store: the URL and endpoint tracked in .dvc/config, the keys in
    .dvc/config.local (git-ignored)."""
    root = tmp_path_factory.mktemp("served")
    raw = tiny_raw_params(ingest={"target": "folder"}, validate={"min_per_class": 5},
                          split={"labels_per_class": 6, "val_per_class": 3, "test_fraction": 0.25},
                          orchestrate={**QUIET_CRONS, "work_pool": "tl-test"})
    project = make_project(root / "proj", raw)
    dvc(project, "remote", "add", "-d", "store", f"s3://{s3.bucket}/dvc")
    dvc(project, "remote", "modify", "store", "endpointurl", s3.endpoint)
    dvc(project, "remote", "modify", "--local", "store", "access_key_id", CREDENTIALS["AWS_ACCESS_KEY_ID"])
    dvc(project, "remote", "modify", "--local", "store", "secret_access_key", CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    x, y, first, _ = target_images(builtin_sets)
    write_images(project / "data/external/image", x[first], y[first], CLASSES, 0)
    home, api = root / "prefect-client", prefect_api
    home.mkdir()
    prefect_cli(home, api, "work-pool", "create", "tl-test", "--type", "process")
    deployed = transferline(project, "deploy", "--name", "nightly", env={"PREFECT_API_URL": api})
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    with process_worker(home, api, "tl-test"):
        t0 = time.perf_counter()
        run_id = trigger(home, api, "transferline/nightly")
        run = wait_for_run(api, run_id, timeout=900)
        seconds = time.perf_counter() - t0
        check_id = trigger(home, api, "transferline-check/nightly")
        check_run = wait_for_run(api, check_id, timeout=300)
    worker_log = (home / "worker.log").read_text()
    return SimpleNamespace(
        project=project, run=run, seconds=seconds, artifacts=artifacts(api, run_id), check_run=check_run,
        logs=logs(api, run_id),
        check_artifacts=artifacts(api, check_id), worker_log=worker_log, deployed=deployed,
        deployments={n: deployment(api, n) for n in ("transferline/nightly", "transferline-check/nightly")},
    )


@pytest.mark.slow
def test_deployment_runs_on_a_real_prefect_server(served):
    assert served.run["state"]["type"] == "COMPLETED", served.worker_log[-4000:]
    # the schedules come from params.yaml orchestrate
    crons = {n: [(s["schedule"]["cron"], s["schedule"]["timezone"]) for s in d["schedules"]]
             for n, d in served.deployments.items()}
    assert crons == {"transferline/nightly": [("0 3 1 1 *", "Europe/Berlin")],
                     "transferline-check/nightly": [("30 3 1 1 *", "Europe/Berlin")]}
    assert all(d["work_pool_name"] == "tl-test" for d in served.deployments.values())
    # one run at a time per deployment, by Prefect's own deployment concurrency limit
    assert all(d["global_concurrency_limit"]["limit"] == 1 for d in served.deployments.values())

    # every stage ran in the project folder and the model was registered
    register = json.loads((served.project / "reports/register.json").read_text())
    assert register["version"] == "1"
    # the status after the run on the worker reads the store without importing MLflow
    shown = transferline(served.project, "status", "--json", env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert json.loads(shown.stdout)["champion"]["version"] == "1"
    mlflow = who_imported(import_chains(shown.stderr), "mlflow")
    assert mlflow is None, f"status imported mlflow after a scheduled run, via {mlflow}"
    gate = json.loads((served.project / "reports/promote.json").read_text())
    assert gate["decision"] == "first_champion" and gate["challenger"]["version"] == "1"
    metrics = json.loads((served.project / "reports/metrics.json").read_text())

    # the run's report: markdown summary, stage and metric tables, progress at 100 %
    by_key = {a["key"]: a for a in served.artifacts if a.get("key")}
    report = by_key["transferline-report"]["data"]
    assert "completed" in report and "ran: " + ", ".join(STAGES) in report
    assert f"{metrics['transfer_gain']['accuracy']:+.4f}" in report
    assert "Gate decision: **first_champion**" in report
    assert "scratch" in report.split("## Starting points (chosen on validation)")[1]
    assert "#/experiments/" in report and "/runs/" in report
    stages = json.loads(by_key["transferline-stages"]["data"])
    assert [row["stage"] for row in stages] == list(STAGES) and {row["status"] for row in stages} == {"ran"}
    table = json.loads(by_key["transferline-metrics"]["data"])
    assert {"model": "finetune", "metric": "accuracy", "value": round(metrics["finetune"]["accuracy"], 4)} in table
    # training progress reaches the run's log in the Prefect API
    assert "finetune (pretrain): 100%" in served.logs and "[finetune] candidate pretrain: LogME" in served.logs
    progress = [a for a in served.artifacts if a["type"] == "progress"]
    assert progress and progress[0]["data"] == 100.0

    # the scheduled check right after: nothing to do
    assert served.check_run["state"]["type"] == "COMPLETED", served.worker_log[-4000:]
    check = next(a for a in served.check_artifacts if a.get("key") == "transferline-check")
    assert "nothing to do" in check["data"]


@pytest.mark.slow
@pytest.mark.multimachine
def test_fresh_clone_pulls_from_the_object_store_and_recomputes_nothing(served, s3, tmp_path, shared_prefect):
    project = served.project
    # the deployed run pushed data and checkpoints to the object store, nothing to the old local remote
    pushed = s3.keys("dvc/")
    assert pushed and all(k.startswith("dvc/files/md5/") for k in pushed)
    assert not (project / ".remote").exists()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "-A"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-qm", "pipeline run"], cwd=project, check=True)
    secrets = ["-e", CREDENTIALS["AWS_ACCESS_KEY_ID"], "-e", CREDENTIALS["AWS_SECRET_ACCESS_KEY"]]
    tracked = subprocess.run(["git", "grep", "-I", "-l", *secrets], cwd=project, capture_output=True, text=True)
    assert tracked.stdout == "", f"a key landed in a tracked file: {tracked.stdout}"

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    assert not (clone / "models/finetune").exists() and not (clone / ".dvc/config.local").exists()
    # the clone has the tracked remote (URL, endpoint) and its keys from the environment
    env = {**os.environ, **CREDENTIALS}
    print("fresh clone, dvc pull:", dvc(clone, "pull", env=env).strip().splitlines()[-1])
    assert (clone / "models/finetune/model.safetensors").read_bytes() == \
        (project / "models/finetune/model.safetensors").read_bytes()

    # on the team's tracking store (the served project's database stands in for the MLflow server):
    # data, checkpoints and the registered model are all there, so every stage is skipped
    before = registry(project)
    shared = transferline(clone, "run", env={**CREDENTIALS, "MLFLOW_TRACKING_URI": f"sqlite:///{project}/.transferline/mlflow.db"})
    assert shared.returncode == 0, shared.stderr[-3000:]
    ran, skipped = summary_lists(shared.stderr)
    print("fresh clone, shared store:", " ".join(shared.stderr.split()).split("ran: ")[-1][:400])
    assert ran == [] and skipped == list(STAGES), shared.stderr[-2000:]
    assert registry(project) == before

    # on the clone's own, empty tracking store (SQLite in the clone): nothing is recomputed, and
    # the model DVC restored is registered there (re-sync)
    again = transferline(clone, "run", env=CREDENTIALS)
    assert again.returncode == 0, again.stderr[-3000:]
    ran, skipped = summary_lists(again.stderr)
    assert skipped == list(STAGES[:-2]) and ran == ["register", "promote"], again.stderr[-2000:]


# --- on the same project: data-triggered check, the run lock, a failed run -----------------------------
# (runs after the clone test, which needs the project as the server run left it)


@pytest.mark.slow
def test_check_runs_only_on_new_data_and_a_failed_run_changes_nothing(served, builtin_sets, shared_prefect):
    project = served.project
    target = project / "data/external/image"
    x, y, _, later = target_images(builtin_sets)
    assert registry(project) == (1, "1")

    # nothing new: the check says so and runs nothing
    quiet = transferline(project, "check")
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert "nothing to do" in quiet.stderr
    assert registry(project) == (1, "1")

    # new images: the check runs the pipeline; meanwhile a second run finds the lock taken
    write_images(target, x[later], y[later], CLASSES, 1000)
    busy_check = transferline(project, "check", wait=False)
    lock = project / ".transferline/run.lock"
    deadline = time.monotonic() + 60
    while not (lock.is_file() and lock.read_text() == f"pid {busy_check.pid}"):
        assert time.monotonic() < deadline and busy_check.poll() is None, busy_check.communicate()
        time.sleep(0.2)
    second = transferline(project, "run")
    assert second.returncode == 1
    assert f"another transferline run holds the lock (pid {busy_check.pid})" in second.stderr
    out, err = busy_check.communicate(timeout=1200)
    assert busy_check.returncode == 0, err[-3000:]
    assert "ingest: data/external/image modified" in " ".join(err.split())
    ran, skipped = summary_lists(err)
    assert ran[:4] == ["ingest", "validate", "split", "preprocess"] and "register" in ran, err[-2000:]
    assert "pretrain" in skipped  # same source data: the pretrained backbone is reused
    versions, champion = registry(project)
    assert versions == 2  # a challenger

    # a corrupt image: the pre-flight names it in seconds (exit 2) before any stage or Prefect runs
    (target / "cat/corrupt.png").write_bytes(b"\x89PNG truncated")
    refused = transferline(project, "check")
    assert refused.returncode == 2 and "cat/corrupt.png" in refused.stderr, refused.stderr[-2000:]
    assert registry(project) == (versions, champion)
    (target / "cat/corrupt.png").unlink()

    # data only the validate stage can judge (one image under two labels): the run fails with the
    # problem named, the MLflow run FAILED, the registry untouched
    cat = sorted((target / "cat").glob("*.png"))[0]
    (target / "zebra" / f"copy_of_{cat.name}").write_bytes(cat.read_bytes())
    bad = transferline(project, "check")
    assert bad.returncode == 1, bad.stderr[-2000:]
    assert "stage 'validate' failed" in bad.stderr and "different labels" in bad.stderr
    assert registry(project) == (versions, champion)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project}/.transferline/mlflow.db")
    experiment = client.get_experiment_by_name("transferline").experiment_id
    runs = client.search_runs([experiment], "attributes.run_name = 'pipeline'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    assert runs[0].info.status == "FAILED" and "validate" in runs[0].data.tags["error"]
