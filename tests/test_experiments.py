"""The label-efficiency, strategy and objective experiments on a tiny real
slice: trials are Prefect mapped task runs (on the session's Prefect server),
each a nested MLflow run."""

from __future__ import annotations

import csv
from datetime import datetime, timezone

import mlflow
import pytest

from conftest import tiny_raw_params
from transferline.checkpoint import save_weights
from transferline.config import parse_params
from transferline.experiments import OUT, ExperimentError
from transferline.experiments.image import compare_strategies, objectives
from transferline.experiments.starts import label_efficiency, transferability
from transferline.image.models import SmallCNN


pytestmark = pytest.mark.usefixtures("prefect_in_process")  # conftest: the session's Prefect server


def _task_run_names(since: datetime) -> set[str]:
    """Task runs completed that started after `since`: the session's server holds other tests' too."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterStartTime

    started = TaskRunFilter(start_time=TaskRunFilterStartTime(after_=since))
    with get_client(sync_client=True) as client:
        return {r.name for r in client.read_task_runs(task_run_filter=started) if r.state and r.state.is_completed()}


def _params(tmp_path, **over):
    experiments = {"budgets": [2, 4], "seeds": [0, 1], "strategies": ["linear_probe", "gradual"],
                   **over.pop("experiments", {})}
    raw = tiny_raw_params(finetune={"epochs": 2, **over.pop("finetune", {})}, experiments=experiments, **over)
    raw["tracking"] = {**raw["tracking"], "uri": f"sqlite:///{tmp_path}/mlflow.db"}
    return parse_params(raw)


def test_needs_pretrained_weights(tiny_raw):
    with pytest.raises(ExperimentError, match="--until pretrain"):
        label_efficiency(_params(tiny_raw))


def test_label_efficiency_table_plot_and_runs(tiny_raw):
    pretrained = save_weights(SmallCNN(10), tiny_raw / "models/pretrain/model.safetensors",
                              meta={"arch": "small_cnn", "num_classes": 10, "in_channels": 1})
    before = pretrained.read_bytes()
    since = datetime.now(timezone.utc)
    rows = label_efficiency(_params(tiny_raw, experiments={"workers": 2}))  # two trials at once
    assert [(r["labels_per_class"], r["seed"]) for r in rows] == [(2, 0), (2, 1), (4, 0), (4, 1)]
    assert all(0 <= r["finetune_accuracy"] <= 1 and 0 <= r["scratch_accuracy"] <= 1 for r in rows)
    with open(tiny_raw / OUT / "label_efficiency.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    assert "| 4 | 2 |" in (tiny_raw / OUT / "label_efficiency.md").read_text()
    assert (tiny_raw / OUT / "label_efficiency.png").stat().st_size > 5000
    runs = mlflow.search_runs(experiment_names=["transferline"], output_format="list")
    parent = next(r for r in runs if r.info.run_name == "label-efficiency")
    assert len([r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]) == 4
    assert {f"label-efficiency_labels{b}_seed{s}" for b in (2, 4) for s in (0, 1)} <= _task_run_names(since)
    # the registered model is the candidate chosen on validation, and never the test split's pick
    for r in rows:
        assert r["finetune_accuracy"] == r[f"{r['winner']}.accuracy"]
        lead = r["pretrain.val_acc"] - r["scratch.val_acc"]  # pretrain must lead by min_val_gain (0.01)
        assert r["winner"] == ("pretrain" if lead >= 0.01 - 1e-9 else "scratch")
    # the pipeline's own outputs were not touched
    assert not (tiny_raw / "data/split").exists() and not (tiny_raw / "models/finetune").exists()
    # each trial wrote into its own folders, none of them links into the project
    trial = tiny_raw / ".transferline/experiments/label-efficiency_labels2_seed0"
    assert (trial / "models/finetune/model.safetensors").is_file() and (trial / "data/split/target.npz").is_file()
    assert not any(p.is_symlink() for p in (tiny_raw / ".transferline/experiments").rglob("*"))
    assert pretrained.read_bytes() == before
    assert sorted(p.name for p in (tiny_raw / "models/pretrain").iterdir()) == ["model.safetensors"]


def test_transferability_rank_correlation(tiny_raw):
    for path in ("models/pretrain/model.safetensors", "data/external/weights/other.safetensors"):
        save_weights(SmallCNN(10), tiny_raw / path, meta={"arch": "small_cnn", "num_classes": 10, "in_channels": 1})
    with pytest.raises(ExperimentError, match="at least 3"):
        transferability(_params(tiny_raw))
    params = _params(tiny_raw, experiments={"budgets": [4], "seeds": [0]},
                     finetune={"candidates": ["scratch", "pretrain", "data/external/weights/other.safetensors"]})
    table = transferability(params)
    assert [t["labels_per_class"] for t in table] == [4, "all"] and table[-1]["points"] == 3
    # "" where every candidate tied (a tiny run can score them alike), else a correlation
    assert table[-1]["spearman_pooled"] == "" or -1 <= table[-1]["spearman_pooled"] <= 1
    assert (tiny_raw / OUT / "transferability.png").stat().st_size > 5000


def test_strategy_table(tiny_raw):
    save_weights(SmallCNN(10), tiny_raw / "models/pretrain/model.safetensors",
                 meta={"arch": "small_cnn", "num_classes": 10, "in_channels": 1})
    rows = compare_strategies(_params(tiny_raw))
    assert [r["strategy"] for r in rows] == ["scratch (baseline)", "linear_probe", "gradual"]
    assert all(r["train_seconds"] > 0 and r["epochs_run"] == 2 for r in rows)
    assert "linear_probe" in (tiny_raw / OUT / "compare_strategies.md").read_text()


def test_objectives_table(tiny_raw):
    params = _params(tiny_raw, split={"source_max_samples": 200}, pretrain={"epochs": 1},
                     experiments={"objectives": ["supervised", "denoising",
                                                 {"objective": "contrastive", "unlabelled": ["target"]}]})
    rows = objectives(params)  # needs no pipeline pretrain: every trial pretrains its own
    assert [r["objective"] for r in rows] == ["scratch (baseline)", "supervised", "denoising", "contrastive_target"]
    assert [r["pool"] for r in rows] == ["-", "-", "source+target", "target"]
    for r in rows[1:]:
        assert r["pretrain_epochs"] == 1 and r["pretrain_seconds"] > 0
        assert r["gain"] == round(r["accuracy"] - rows[0]["accuracy"], 4)
    assert "contrastive_target" in (tiny_raw / OUT / "objectives.md").read_text()
    runs = mlflow.search_runs(experiment_names=["transferline"], output_format="list")
    parent = next(r for r in runs if r.info.run_name == "objectives")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4
    assert all("pretrain.accuracy" in c.data.metrics and "pretrain_seconds" in c.data.metrics
               for c in children if c.info.run_name != "objectives_scratch")
    assert not (tiny_raw / "models").exists()  # the pipeline's folders untouched


def test_failed_trial_names_its_log(tiny_raw):
    params = _params(tiny_raw, experiments={"objectives": ["denoising"]},
                     pretrain={"unlabelled": ["target"]}, split={"test_fraction": 0.5, "labels_per_class": 15})
    # target pool is empty here (40 per class: 20 test, 5 val, 15 train), so denoising cannot train
    with pytest.raises(ExperimentError, match="objective_denoising failed .*trial.log"):
        objectives(params)
