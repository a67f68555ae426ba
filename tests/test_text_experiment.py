"""`transferline experiment text-models` on a tiny real Rotten Tomatoes project:
per-trial label budgets (a seeded subset of the split's), several seeds with
mean and spread, nested MLflow runs, `--trial` re-runs keeping the other rows."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from text_helpers import run_stages, tiny_text_raw
from transferline.config import parse_params
from transferline.experiments import ExperimentError
from transferline.experiments.text import WORK, text_models
from transferline.io import read_json

TRIALS = [
    {"name": "mlm", "init_from": "pretrain", "lr": 1e-3, "epochs": 1, "labels_per_class": 10, "seeds": [0, 1]},
    {"name": "scratch", "init_from": "scratch", "lr": 1e-3, "epochs": 1, "labels_per_class": 10, "seeds": [0, 1]},
    {"name": "bilstm", "init_from": "scratch", "model": "bilstm", "lr": 1e-3, "epochs": 1},
]


def _params(trials):
    raw = tiny_text_raw(finetune={"max_train_steps": 2})
    raw["experiments"]["text"] = {"text_models": trials}
    return parse_params(raw)


def test_text_models_budgets_seeds_runs_and_rerun(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)
    params = _params(TRIALS)
    run_stages(params, params.paths, "ingest", "validate", "split", "preprocess", "pretrain")

    rows = text_models(params)
    assert [r["model"] for r in rows] == ["mlm", "scratch", "bilstm"]
    mlm, _, bilstm = rows
    assert (mlm["labels_per_class"], mlm["train_texts"], mlm["seeds"]) == (10, 20, 2)
    assert (bilstm["labels_per_class"], bilstm["train_texts"], bilstm["seeds"]) == (40, 80, 1)  # the split's budget
    per_seed = [float(a) for a in mlm["test_accuracy_per_seed"].split()]
    assert len(per_seed) == 2 and mlm["test_accuracy"] == pytest.approx(statistics.mean(per_seed), abs=1e-4)
    assert mlm["test_accuracy_sd"] == pytest.approx(statistics.stdev(per_seed), abs=1e-4)
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in rows)
    assert read_json("reports/experiments/text_models.json") == rows
    assert "| mlm | 10 |" in Path("reports/experiments/text_models.md").read_text()
    assert Path("reports/experiments/text_models.png").stat().st_size > 5000
    # trials wrote into their own folder, read the pipeline's data there, and left the pipeline's models alone
    assert (WORK / "pipeline/models/mlm/model.safetensors").is_file()
    assert not any(p.is_symlink() for p in WORK.rglob("*"))
    assert sorted(p.name for p in Path("models").iterdir()) == ["pretrain"]

    parent = mlflow.search_runs(filter_string="attributes.run_name = 'text-models'", output_format="list")[0]
    children = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  output_format="list")
    assert sorted(c.info.run_name for c in children) == ["bilstm", "mlm", "scratch"]
    assert {c.info.run_name: c.data.metrics["test_accuracy"] for c in children}["mlm"] == mlm["test_accuracy"]

    # one trial again: the other rows stay as they were
    again = text_models(params, only=["bilstm"])
    assert again[:2] == rows[:2] and again[2]["model"] == "bilstm"


def test_text_models_refuses_a_budget_above_the_split(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = _params([{**TRIALS[0], "labels_per_class": 41}])
    with pytest.raises(ExperimentError, match=r"'mlm': labels_per_class 41 .*split.text.labels_per_class: 40"):
        text_models(params)
    assert not Path("reports/experiments/text_models.json").exists()


def test_two_trials_with_one_name_are_refused():
    with pytest.raises(ValueError, match=r"experiments\.text\.text_models: the name 'mlm' is used twice"):
        _params([TRIALS[0], {**TRIALS[1], "name": "mlm"}])


def test_shipped_trials_are_the_schema_default():
    """params.yaml and the schema default list the same trials: a params file without
    experiments.text_models runs the table the README shows."""
    from transferline.config import read_raw
    from transferline.config.text import DEFAULT_TRIALS

    raw = read_raw(Path(__file__).parents[1] / "params.yaml")
    raw["modality"] = "text"  # the text values are read (and typed) only for the text modality
    assert parse_params(raw).text.experiments.text_models == DEFAULT_TRIALS
