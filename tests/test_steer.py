"""Steering a project from the command line, and DVC experiments that never
touch the champion: `run --set` is validated (the key named), written into
params.yaml with its comments, and `--dry-run` writes nothing; `dvc exp run
-S` in a temp folder runs up to evaluate, registers nothing and leaves the
champion where it was, `transferline promote --from-experiment` then gates
it; `transferline card` prints the scratch baseline and the gain."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MLFLOW_ENV, ROOT, make_project, tiny_raw_params


def cli(project: Path, *args: str, tool: str = "transferline.cli") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV}
    env.update(COLUMNS="200", NO_COLOR="1", PREFECT_HOME=str(project / ".transferline/prefect"),
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]))  # stages' `python`
    return subprocess.run([sys.executable, "-m", tool, *args], cwd=project, env=env, capture_output=True, text=True,
                          timeout=600)


def test_set_is_validated_written_with_comments_and_dry_run_changes_nothing(tmp_path, monkeypatch):
    project = make_project(tmp_path / "p", tiny_raw_params())
    shutil.copy(ROOT / "params.yaml", project / "params.yaml")  # the shipped file, comments and all
    before = (project / "params.yaml").read_text()

    for bad, key in (("finetune.lrr=1", "finetune.image.lrr"), ("split.labels_per_class=0", "split.image.labels_per_class"),
                     ("finetune.text.lr=abc", "finetune.text.lr"), ("finetune.lr", "KEY=VALUE")):
        done = cli(project, "run", "--set", bad)
        assert done.returncode == 2, (bad, done.stderr)
        assert key in done.stderr, done.stderr
    dry = cli(project, "run", "--set", "finetune.lr=3e-4", "--set", "split.labels_per_class=25", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["set"]["finetune.image.lr"] == {"from": 0.001, "to": 0.0003}
    assert plan["would_run"]["finetune"].startswith("reads finetune.image.lr")
    assert "never run" in plan["would_run"]["ingest"]
    assert (project / "params.yaml").read_text() == before
    assert not (project / "dvc.lock").exists()

    from transferline.cli import steer
    from transferline.config import load_params

    monkeypatch.chdir(project)
    _, _, changes = steer.validate_sets(["finetune.lr=3e-4", "split.labels_per_class=25"])
    steer.write_sets(changes)
    after = (project / "params.yaml").read_text()
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines()) if a != b]
    assert changed == [("    labels_per_class: 50          # label budget for fine-tuning",
                        "    labels_per_class: 25          # label budget for fine-tuning"),
                       ("    lr: 0.001", "    lr: 0.0003")], changed  # one line each, comments kept
    cfg = load_params()
    assert (cfg.image.finetune.lr, cfg.image.split.labels_per_class) == (0.0003, 25)


def _registry(project: Path) -> tuple[list[str], str | None]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / '.transferline/mlflow.db'}")
    versions = sorted(str(v.version) for v in client.search_model_versions("name = 'transferline-image'"))
    champion = client.get_registered_model("transferline-image").aliases.get("champion")
    return versions, None if champion is None else str(champion)


@pytest.mark.slow
def test_dvc_experiment_never_touches_the_champion(tmp_path):
    # 15 epochs: 3 can leave a tiny model at chance; no floors, so the first version surely becomes champion
    gate = {"metrics": {"accuracy": {"min": 0.0, "margin_abs": 0.005}, "macro_f1": {"min": 0.0}}}
    project = make_project(tmp_path / "p", tiny_raw_params(finetune={"epochs": 15}, promote=gate))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    done = cli(project, "repro", tool="dvc")
    assert done.returncode == 0, done.stderr[-3000:]
    subprocess.run([*git, "add", "-A"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-qm", "baseline"], cwd=project, check=True)
    assert _registry(project) == (["1"], "1")
    metrics = json.loads((project / "reports/metrics.json").read_text())

    card = cli(project, "card", "transferline-image@champion")
    assert card.returncode == 0, card.stderr
    gain, scratch = metrics["transfer_gain"]["accuracy"], metrics["scratch"]["accuracy"]
    low, high = metrics["transfer_gain_ci95"]["accuracy_low"], metrics["transfer_gain_ci95"]["accuracy_high"]
    assert low <= gain <= high, metrics
    assert f"**transfer gain {gain:+.4f} (95% interval {low:+.4f} .. {high:+.4f} over {metrics['n_test']} test" \
        in card.stdout, card.stdout
    assert f"| accuracy | {metrics['finetune']['accuracy']:.4f} | {scratch:.4f} | {gain:.4f} |" in card.stdout
    assert "**first_champion**" in card.stdout and "scratch baseline" in card.stdout

    # a temp-folder experiment: stages up to evaluate rerun, register and promote skip, no store of its own
    exp = cli(project, "exp", "run", "--temp", "-n", "fast-lr", "-S", "finetune.image.lr=0.003", tool="dvc")
    assert exp.returncode == 0, exp.stderr[-3000:]
    assert "skipped: DVC experiment" in exp.stdout + exp.stderr
    assert _registry(project) == (["1"], "1")
    assert list(project.rglob("mlflow.db")) == [project / ".transferline/mlflow.db"]
    shown = cli(project, "exp", "show", "--csv", tool="dvc")
    header, *rows = shown.stdout.splitlines()
    assert "transfer_gain.accuracy" in header and "finetune.accuracy" in header, header
    assert any(r.startswith("fast-lr,") for r in rows), shown.stdout

    promoted = cli(project, "promote", "--from-experiment", "fast-lr", "--json")
    assert promoted.returncode == 0, promoted.stderr[-3000:]
    report = json.loads(promoted.stdout)
    assert report["challenger"]["version"] == "2" and report["decision"] in ("promoted", "kept"), report
    assert _registry(project)[0] == ["1", "2"]
