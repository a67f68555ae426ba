"""The whole flow on a tiny slice of the built-in data, in a fresh git + DVC
project: real Prefect (the session's server), real DVC, real MLflow registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import MLFLOW_ENV, make_project, tiny_raw_params

pytestmark = pytest.mark.slow


def transferline(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV}
    env["PREFECT_HOME"] = str(project / ".transferline/prefect")
    return subprocess.run([sys.executable, "-m", "transferline.cli", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=1200)


def ran_and_skipped(result: subprocess.CompletedProcess) -> tuple[str, str]:
    lines = result.stderr.replace("\n", " ")
    ran = lines.split("ran: ")[-1].split(" skipped:")[0]
    skipped = lines.split("skipped: ")[-1].split(" test accuracy")[0]
    return ran, skipped


def test_pipeline_end_to_end(tmp_path, shared_prefect):
    project = make_project(tmp_path / "proj", tiny_raw_params(finetune={"epochs": 15}))

    first = transferline(project, "run")
    assert first.returncode == 0, first.stderr[-3000:]
    metrics = json.loads((project / "reports/metrics.json").read_text())
    # 10 labels per class, 15 epochs: three times the 0.1 of chance on 10 classes
    assert metrics["finetune"]["accuracy"] > 0.3, metrics
    assert metrics["transfer_gain"]["accuracy"] == pytest.approx(
        metrics["finetune"]["accuracy"] - metrics["scratch"]["accuracy"], abs=1e-4)
    assert (project / "reports/plots/confusion_matrix.png").stat().st_size > 5000
    # both starting points trained and scored on validation; the registered model is the better one
    chosen = json.loads((project / "reports/candidates.json").read_text())
    val = {r["candidate"]: r["val_acc"] for r in chosen["candidates"]}
    assert set(val) == {"scratch", "pretrain"}
    lead = val["pretrain"] - val["scratch"]  # pretrain must lead by finetune.image.min_val_gain (0.01)
    assert chosen["winner"] == ("pretrain" if lead >= 0.01 - 1e-9 else "scratch"), chosen
    assert metrics["finetune"] == metrics["candidates"][chosen["winner"]]
    assert f"starting point: {chosen['verdict']}" in " ".join(first.stderr.split()), first.stderr[-2000:]
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=project,
                            capture_output=True, text=True, check=True)
    assert json.loads(status.stdout) == {}
    assert any((project / ".remote").rglob("*")), "dvc push sent nothing to the remote"

    promoted = json.loads((project / "reports/promote.json").read_text())
    assert promoted["decision"] == "first_champion", promoted
    info = json.loads(transferline(project, "status", "--json").stdout)
    assert info["champion"]["name"] == "transferline-image" and info["champion"]["version"] == "1"
    assert info["champion"]["metrics"]["test_accuracy"] == pytest.approx(metrics["finetune"]["accuracy"])
    assert info["last_run"]["status"] == "FINISHED"

    # nothing changed: every stage skipped
    again = transferline(project, "run")
    assert again.returncode == 0, again.stderr[-3000:]
    ran, _ = ran_and_skipped(again)
    assert ran.startswith("nothing"), again.stderr[-2000:]
    # DVC was asked once, in the flow's process: no `dvc repro` process per stage
    assert "didn't change, skipping" not in again.stderr and "Running stage" not in again.stderr

    # only a fine-tuning value changed: finetune and what follows rerun
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["finetune"]["image"]["lr"] = raw["finetune"]["image"]["lr"] / 2
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    third = transferline(project, "run")
    assert third.returncode == 0, third.stderr[-3000:]
    ran, skipped = ran_and_skipped(third)
    assert ran.split(", ") == ["finetune", "evaluate", "register", "promote"], third.stderr[-2000:]
    assert skipped.split(", ") == ["ingest", "validate", "split", "preprocess", "pretrain"]
    assert "didn't change, skipping" not in third.stderr  # the stages upstream of finetune started no process
    info = json.loads(transferline(project, "status", "--json").stdout)
    promoted = json.loads((project / "reports/promote.json").read_text())  # version 2 went through the gate
    assert promoted["challenger"]["version"] == "2" and promoted["champion"]["version"] == "1"
    assert promoted["decision"] in ("promoted", "kept")
    assert info["champion"]["version"] == promoted["champion_after"] == ("2" if promoted["decision"] == "promoted" else "1")

    # the MLflow parent run has a nested run per stage and lineage tags
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project}/.transferline/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["transferline"], output_format="list")
    parents = [r for r in runs if r.info.run_name == "pipeline"]
    assert len(parents) == 3
    latest = max(parents, key=lambda r: r.info.start_time)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == latest.info.run_id]
    assert sorted(c.info.run_name for c in children) == sorted(
        ["ingest", "validate", "split", "preprocess", "pretrain", "finetune", "evaluate", "register", "promote"])
    assert latest.data.tags["dvc.models/finetune"].endswith(".dir")
    assert "dvc.data/processed" in latest.data.tags and "git.commit" in latest.data.tags
    ft = next(c for c in children if c.info.run_name == "finetune")
    assert ft.data.tags["stage.status"] == "ran" and ft.data.params["finetune.image.lr"] == str(raw["finetune"]["image"]["lr"])
    history = mlflow.MlflowClient().get_metric_history(ft.info.run_id, "finetune.val_acc")
    assert [m.step for m in history] == list(range(1, 16))


def test_bad_data_stops_the_run_and_keeps_the_champion_data(tmp_path):
    """A folder target with an unreadable image: the run stops before any stage, names the file, exits 2."""
    from PIL import Image

    raw = tiny_raw_params(ingest={"target": "folder"}, split={"labels_per_class": 2, "val_per_class": 1,
                                                             "test_fraction": 0.3},
                          validate={"min_per_class": 3})
    project = make_project(tmp_path / "proj", raw)
    for cls in ("cat", "dog"):
        (project / "data/external/image" / cls).mkdir(parents=True)
        for i in range(6):
            Image.new("L", (32, 32), i * 30 + (cls == "dog") * 7).save(project / "data/external/image" / cls / f"{i}.png")
    (project / "data/external/image/dog/corrupt.jpg").write_bytes(b"\xff\xd8 truncated")
    result = transferline(project, "run")
    # the pre-flight reads the folder before Prefect starts: exit 2, the file named, no stage ran
    assert result.returncode == 2, result.stderr[-2000:]
    assert "dog/corrupt.jpg" in result.stderr and "convert or remove it" in result.stderr
    assert not (project / "data/raw").exists() and not (project / "data/split").exists()
    assert not (project / "reports/register.json").exists()
