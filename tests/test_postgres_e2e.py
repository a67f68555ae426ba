"""The pipeline against a real `mlflow server` backed by PostgreSQL on loopback
(scripts/mlflow-postgres.sh): gate, lineage, restore of the exact data,
serving the champion over HTTP, and racing promotions under the advisory lock.

PostgreSQL must be installed (.ci/run installs it). If it cannot start these
tests FAIL; set TRANSFERLINE_SKIP_POSTGRES=1 to skip them on purpose.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import MLFLOW_ENV, ROOT, make_project, tiny_raw_params

pytestmark = pytest.mark.slow

SCRIPT = ROOT / "scripts/mlflow-postgres.sh"
NAME = "transferline-image"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """{"MLFLOW_TRACKING_URI": http://127.0.0.1:port, "TRANSFERLINE_PROMOTE_LOCK": postgresql://...}"""
    if os.environ.get("TRANSFERLINE_SKIP_POSTGRES") == "1":
        pytest.skip("TRANSFERLINE_SKIP_POSTGRES=1: PostgreSQL-backed tests skipped on purpose")
    where = tmp_path_factory.mktemp("mlflow-pg")
    env = {**os.environ, "PYTHON": sys.executable,
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    start = subprocess.run(["bash", str(SCRIPT), "start", str(where)], env=env, capture_output=True, text=True,
                           timeout=300)
    if start.returncode != 0:
        pytest.fail("could not start PostgreSQL + mlflow server with scripts/mlflow-postgres.sh (install PostgreSQL: "
                    "apt-get install -y postgresql, or set TRANSFERLINE_SKIP_POSTGRES=1 to skip on purpose):\n"
                    + start.stdout[-2000:] + start.stderr[-3000:])
    values = dict(line.removeprefix("export ").split("=", 1) for line in (where / "env").read_text().splitlines())
    yield values
    subprocess.run(["bash", str(SCRIPT), "stop", str(where)], env=env, capture_output=True, timeout=120)


def run_cli(project: Path, server: dict, *args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV}
    env.update(server, PREFECT_HOME=str(project / ".transferline/prefect"))
    return subprocess.run([sys.executable, "-m", "transferline.cli", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=timeout)


def digests(project: Path, *folders: str) -> dict[str, str]:
    return {str(p.relative_to(project)): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted((project / folder).rglob("*")) if p.is_file()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def git(project: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=project, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


def test_pipeline_on_postgres_lineage_restore_and_serving(tmp_path, server, shared_prefect):
    import mlflow

    project = make_project(tmp_path / "proj", tiny_raw_params(finetune={"epochs": 8}))
    git(project, "add", "-A")
    git(project, "commit", "-qm", "v1")
    first = run_cli(project, server, "run")
    assert first.returncode == 0, first.stderr[-4000:]
    report = json.loads((project / "reports/promote.json").read_text())
    assert report["decision"] == "first_champion", report
    assert report["lock"]["kind"] == "postgres-advisory"
    data_v1 = digests(project, "data/split", "data/processed", "models/finetune")

    client = mlflow.MlflowClient(server["MLFLOW_TRACKING_URI"])
    assert str(client.get_registered_model(NAME).aliases["champion"]) == "1"
    tags = client.get_model_version(NAME, "1").tags
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert tags["git.commit"] == git(project, "rev-parse", "HEAD")
    assert tags["dvc.data/split"] == lock["split"]["outs"][0]["md5"]
    assert tags["dvc.models/finetune"] == next(o["md5"] for o in lock["finetune"]["outs"] if o["path"] == "models/finetune")
    assert tags["params.finetune.image.epochs"] == "8"
    assert tags["lineage.mlflow_run_id"] == client.get_model_version(NAME, "1").run_id
    assert len(tags["lineage.prefect_flow_run_id"]) == 36  # a flow-run UUID, passed down by the flow
    parent = client.get_run(tags["lineage.mlflow_parent_run_id"])
    assert parent.info.run_name == "pipeline"
    assert parent.data.tags["prefect.flow_run_id"] == tags["lineage.prefect_flow_run_id"]

    # change the data: a smaller label budget -> new split, new model, version 2 through the gate
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["split"]["image"]["labels_per_class"] = 6
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    second = run_cli(project, server, "run")
    assert second.returncode == 0, second.stderr[-4000:]
    report = json.loads((project / "reports/promote.json").read_text())
    assert report["challenger"]["version"] == "2" and report["champion"]["version"] == "1"
    assert str(client.get_registered_model(NAME).aliases["champion"]) == report["champion_after"]
    assert digests(project, "data/split") != {k: v for k, v in data_v1.items() if k.startswith("data/split")}

    # lineage of version 1, then restore its exact data and checkpoint with DVC
    shown = run_cli(project, server, "lineage", f"{NAME}/1", "--json", timeout=300)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert json.loads(shown.stdout)["data"]["data/split"] == tags["dvc.data/split"]
    restored = run_cli(project, server, "lineage", f"{NAME}/1", "--restore", timeout=600)
    assert restored.returncode == 0, restored.stderr[-3000:]
    assert digests(project, "data/split", "data/processed", "models/finetune") == data_v1
    backups = list((project / ".transferline/lineage").glob("dvc.lock.*"))
    assert len(backups) == 1 and "labels_per_class: 6" in backups[0].read_text()

    # the champion served over HTTP on loopback answers raw images
    x_test = np.load(project / "data/split/target.npz")["x_test"][:5]
    x_test = x_test[:, 0] if x_test.ndim == 4 else x_test
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV}
    env["MLFLOW_TRACKING_URI"] = server["MLFLOW_TRACKING_URI"]
    serve = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@champion",
                              "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        body = json.dumps({"inputs": x_test.tolist()}).encode()
        deadline, answer = time.time() + 420, None
        while time.time() < deadline and serve.poll() is None:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                             headers={"Content-Type": "application/json"})
                answer = json.loads(urllib.request.urlopen(req, timeout=30).read())
                break
            except OSError:
                time.sleep(1)
        assert answer is not None, f"mlflow models serve never answered: {serve.stderr.read()[-3000:] if serve.poll() is not None else ''}"
    finally:
        os.killpg(serve.pid, 15)
        serve.wait(timeout=60)
    classes = json.loads((project / "data/processed/meta.json").read_text())["target"]["classes"]
    assert len(answer["predictions"]) == 5 and set(answer["predictions"]) <= set(classes)


def test_racing_promotions_on_postgres(tmp_path, server, builtin_sets, monkeypatch):
    """Two `transferline promote` processes at once against the server: the advisory lock
    serialises them, the alias ends on the better model."""
    from conftest import tiny_raw_params as raw_params
    from kit.challengers import graded, make_gate_project, register_weights
    from transferline.config import parse_params
    from transferline.champion import force_promote

    x, y = builtin_sets["target"]
    model, _ = make_gate_project(tmp_path, x, y)
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    raw = raw_params(register={"model_name": "race"},
                     promote={"metrics": {"accuracy": {"min": 0.3, "margin_abs": 0.01}}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    for key, value in server.items():
        monkeypatch.setenv(key, value)
    params = parse_params(raw)
    v1, v2, v3 = (register_weights(params, m, tmp_path)["version"]
                  for m in (graded(model, 5), graded(model, 3), model))
    force_promote(params, v1, "race setup: start from the weakest")

    env = {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV}
    env.update(server)
    procs = {v: subprocess.Popen([sys.executable, "-m", "transferline.cli", "promote", "--version", v, "--json"],
                                 cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for v in (v2, v3)}
    reports = {}
    for v, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        reports[v] = json.loads(out)
    import mlflow

    client = mlflow.MlflowClient(server["MLFLOW_TRACKING_URI"])
    assert str(client.get_registered_model("race").aliases["champion"]) == v3
    first, second = sorted(reports.values(), key=lambda r: r["lock"]["acquired_at"])
    assert {r["lock"]["kind"] for r in reports.values()} == {"postgres-advisory"}
    assert first["lock"]["released_at"] <= second["lock"]["acquired_at"], "the gates overlapped"
    assert second["champion"]["version"] == first["champion_after"]
