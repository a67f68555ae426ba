"""The label-efficiency and strategy experiments on a tiny real slice."""

from __future__ import annotations

import csv

import mlflow
import pytest

from conftest import tiny_raw_params
from transferline.checkpoint import save_weights
from transferline.config import parse_params
from transferline.experiments import ExperimentError, OUT, compare_strategies, label_efficiency
from transferline.models import SmallCNN


def _params(tmp_path, **over):
    raw = tiny_raw_params(finetune={"epochs": 2}, experiments={"budgets": [2, 4], "seeds": [0, 1],
                                                              "strategies": ["linear_probe", "gradual"]}, **over)
    raw["tracking"] = {**raw["tracking"], "uri": f"sqlite:///{tmp_path}/mlflow.db"}
    return parse_params(raw)


def test_needs_pretrained_weights(tiny_raw):
    with pytest.raises(ExperimentError, match="--until pretrain"):
        label_efficiency(_params(tiny_raw))


def test_label_efficiency_table_plot_and_runs(tiny_raw):
    pretrained = save_weights(SmallCNN(10), tiny_raw / "models/pretrain/model.safetensors",
                              meta={"arch": "small_cnn", "num_classes": 10, "in_channels": 1})
    before = pretrained.read_bytes()
    rows = label_efficiency(_params(tiny_raw))
    assert [(r["labels_per_class"], r["seed"]) for r in rows] == [(2, 0), (2, 1), (4, 0), (4, 1)]
    assert all(0 <= r["finetune_accuracy"] <= 1 and 0 <= r["scratch_accuracy"] <= 1 for r in rows)
    with open(tiny_raw / OUT / "label_efficiency.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    assert "| 4 | 2 |" in (tiny_raw / OUT / "label_efficiency.md").read_text()
    assert (tiny_raw / OUT / "label_efficiency.png").stat().st_size > 5000
    runs = mlflow.search_runs(experiment_names=["transferline"], output_format="list")
    parent = next(r for r in runs if r.info.run_name == "label-efficiency")
    assert len([r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]) == 4
    # the pipeline's own outputs were not touched
    assert not (tiny_raw / "data/split").exists() and not (tiny_raw / "models/finetune").exists()
    assert pretrained.read_bytes() == before
    assert sorted(p.name for p in (tiny_raw / "models/pretrain").iterdir()) == ["model.safetensors"]


def test_strategy_table(tiny_raw):
    save_weights(SmallCNN(10), tiny_raw / "models/pretrain/model.safetensors",
                 meta={"arch": "small_cnn", "num_classes": 10, "in_channels": 1})
    rows = compare_strategies(_params(tiny_raw))
    assert [r["strategy"] for r in rows] == ["scratch (baseline)", "linear_probe", "gradual"]
    assert all(r["train_seconds"] > 0 and r["epochs_run"] == 2 for r in rows)
    assert "linear_probe" in (tiny_raw / OUT / "compare_strategies.md").read_text()
