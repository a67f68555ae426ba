"""The multi-machine set-up end to end, on loopback: scripts/servers.sh starts
PostgreSQL, the S3-compatible object store, the MLflow server (PostgreSQL,
artifacts in the object store) and the Prefect server (PostgreSQL); the
project is a git repository with its DVC remote in the object store;
`transferline deploy --from-git` registers deployments that clone it at a
commit; a process worker started in an empty folder runs the nightly pipeline;
the model is in the registry, its files and the data in the object store.

PostgreSQL must be installed (.ci/run installs it). Without its binaries this
test is skipped with the reason shown (`pytest -ra`); if they are there but the
servers cannot start, it FAILS. TRANSFERLINE_SKIP_POSTGRES=1 skips it on purpose.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import MLFLOW_ENV, ROOT, make_project, tiny_raw_params
from kit.prefectserver import deployment, logs, prefect_cli, process_worker, trigger, wait_for_run
from kit.s3server import S3Server

pytestmark = [pytest.mark.slow, pytest.mark.multimachine]

SCRIPT = ROOT / "scripts/servers.sh"
QUIET_CRONS = {"pipeline_cron": "0 3 1 1 *", "check_cron": "30 3 1 1 *"}  # never during the test


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """The values of DIR/env that scripts/servers.sh writes."""
    if os.environ.get("TRANSFERLINE_SKIP_POSTGRES") == "1":
        pytest.skip("TRANSFERLINE_SKIP_POSTGRES=1: PostgreSQL-backed tests skipped on purpose")
    # where scripts/mlflow-postgres.sh looks: PATH, then Debian's versioned folders
    if not shutil.which("pg_ctl") and not glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"):
        pytest.skip("PostgreSQL is not installed (no pg_ctl on PATH or in /usr/lib/postgresql/*/bin): "
                    "apt-get install -y postgresql to run the multi-machine end-to-end test")
    where = tmp_path_factory.mktemp("servers")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_")) and k not in MLFLOW_ENV}
    env.update(PYTHON=sys.executable, PATH=os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]]))
    t0 = time.perf_counter()
    start = subprocess.run(["bash", str(SCRIPT), "start", str(where)], env=env, capture_output=True, text=True,
                           timeout=300)
    if start.returncode != 0:
        pytest.fail("scripts/servers.sh start failed (install PostgreSQL: apt-get install -y postgresql, or set "
                    "TRANSFERLINE_SKIP_POSTGRES=1 to skip on purpose):\n" + start.stdout[-2000:] + start.stderr[-3000:])
    print(f"servers up in {time.perf_counter() - t0:.1f} s")
    values = dict(line.removeprefix("export ").split("=", 1) for line in (where / "env").read_text().splitlines())
    yield values
    subprocess.run(["bash", str(SCRIPT), "stop", str(where)], env=env, capture_output=True, timeout=120)


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def test_git_sourced_deployment_runs_on_a_worker_with_nothing_on_disk(tmp_path, servers):
    from mlflow import MlflowClient

    t_start = time.perf_counter()
    s3 = S3Server(servers["TRANSFERLINE_S3_ENDPOINT"], servers["TRANSFERLINE_S3_BUCKET"])
    keys = {k: servers[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    api = servers["PREFECT_API_URL"]

    # the team's repository: code, locked environment, params, the object-store remote (no keys)
    raw = tiny_raw_params(finetune={"epochs": 1}, orchestrate={**QUIET_CRONS, "work_pool": "tl-remote"})
    project = make_project(tmp_path / "proj", raw)
    for name in ("pyproject.toml", "uv.lock"):
        shutil.copy(ROOT / name, project / name)
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "remote", "add", "-d", "store", f"s3://{s3.bucket}/dvc"], cwd=project, check=True)
    subprocess.run([*dvc, "remote", "modify", "store", "endpointurl", s3.endpoint], cwd=project, check=True)
    git(project, "add", "-A")
    git(project, "commit", "-qm", "v1")
    commit = git(project, "rev-parse", "HEAD")
    repo = tmp_path / "origin.git"
    git(tmp_path, "clone", "-q", "--bare", str(project), str(repo))

    home = tmp_path / "prefect-client"
    home.mkdir()
    prefect_cli(home, api, "work-pool", "create", "tl-remote", "--type", "process")
    cli_env = {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV and not k.startswith("PREFECT_")}
    deployed = subprocess.run(
        [sys.executable, "-m", "transferline.cli", "deploy", "--name", "nightly", "--from-git",
         f"file://{repo}@{commit}"],
        cwd=project, env={**cli_env, "PREFECT_API_URL": api, "PREFECT_HOME": str(home)},
        capture_output=True, text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr[-3000:]
    dep = deployment(api, "transferline/nightly")
    steps = [next(iter(step)) for step in dep["pull_steps"]]
    assert steps == ["prefect.deployments.steps.git_clone", "prefect.deployments.steps.run_shell_script",
                     "prefect.deployments.steps.pip_install_requirements", "prefect.deployments.steps.run_shell_script"]
    assert dep["pull_steps"][0]["prefect.deployments.steps.git_clone"]["commit_sha"] == commit
    assert dep["global_concurrency_limit"]["limit"] == 1

    # a worker in an empty folder: git, uv and the project's environment on PATH; the keys and
    # the servers' addresses in its environment; no project files
    empty = tmp_path / "worker"
    empty.mkdir()
    tools = [str(Path(sys.executable).parent), str(Path(shutil.which("uv")).parent)]
    worker_env = {**keys, "MLFLOW_TRACKING_URI": servers["MLFLOW_TRACKING_URI"],
                  "TRANSFERLINE_PROMOTE_LOCK": servers["TRANSFERLINE_PROMOTE_LOCK"],
                  "PATH": os.pathsep.join([*tools, os.environ["PATH"]])}
    wh = tmp_path / "worker-home"
    wh.mkdir()
    with process_worker(wh, api, "tl-remote", cwd=empty, env=worker_env):
        t0 = time.perf_counter()
        run_id = trigger(home, api, "transferline/nightly")
        run = wait_for_run(api, run_id, timeout=600)
        run_s = time.perf_counter() - t0
    log = logs(api, run_id)
    assert run["state"]["type"] == "COMPLETED", log[-3000:] + (wh / "worker.log").read_text()[-3000:]
    assert "Executing deployment step: git_clone" in log and "Executing deployment step: pip_install_requirements" in log
    assert list(empty.iterdir()) == []  # the run cloned into a throw-away folder of its own

    # the model is in the registry (MLflow on PostgreSQL), its files in the object store
    client = MlflowClient(tracking_uri=servers["MLFLOW_TRACKING_URI"])
    versions = client.search_model_versions("name='transferline-image'")
    assert [v.version for v in versions] == ["1"]
    assert versions[0].tags["git.commit"] == commit  # lineage: the commit the worker cloned
    assert any(k.startswith("mlartifacts/") and k.endswith("MLmodel") for k in s3.keys("mlartifacts/"))
    # the data and checkpoints in the object store, under DVC's content addresses
    assert len(s3.keys("dvc/files/md5/")) >= 5
    print(f"git-sourced deployment run: {run_s:.1f} s; whole test {time.perf_counter() - t_start:.1f} s")
