"""Experiment trials on a Ray cluster: two Ray nodes on 127.0.0.1 (a head and
one worker, one CPU each, started with Ray's own cluster utilities: real
raylets and object stores), prefect-ray's RayTaskRunner, a tiny
label-efficiency experiment. The same experiment on the local process pool
gives the same accuracies; each trial is a nested MLflow run that names the
Ray node it ran on."""

from __future__ import annotations

import os
import shutil
import time

import mlflow
import pytest

from conftest import tiny_raw_params
from transferline.checkpoint import save_weights
from transferline.config import parse_params
from transferline.experiments.starts import label_efficiency
from transferline.image.models import SmallCNN

pytestmark = [pytest.mark.multimachine, pytest.mark.usefixtures("prefect_in_process")]  # conftest

# Loopback only: Ray turns 127.0.0.1 into the host's outward address (so other hosts can reach
# it) unless multi-host clustering is off. Ray reads this once, when first imported, and the
# raylets inherit it, so it is set before anything here imports Ray.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"


@pytest.fixture
def ray_cluster():
    """The GCS address of a two-node Ray cluster on loopback."""
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    assert not ray_constants.ENABLE_RAY_CLUSTER, "Ray was imported before this module set its environment"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "node_ip_address": "127.0.0.1"})
    try:
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()


def _params(root, **orchestrate):
    # enough labels and epochs to learn something: equal accuracies at chance level would prove little
    raw = tiny_raw_params(finetune={"epochs": 10}, experiments={"budgets": [10], "seeds": [0, 1], "workers": 2},
                          orchestrate=orchestrate)
    raw["tracking"] = {**raw["tracking"], "uri": f"sqlite:///{root}/mlflow.db"}
    return parse_params(raw)


@pytest.mark.timeout(420)
def test_label_efficiency_on_ray_matches_the_process_pool(tiny_raw, ray_cluster):
    save_weights(SmallCNN(10), tiny_raw / "models/pretrain/model.safetensors",
                 meta={"arch": "small_cnn", "num_classes": 10, "in_channels": 1})
    t0 = time.perf_counter()
    local = label_efficiency(_params(tiny_raw))
    local_s = time.perf_counter() - t0
    shutil.rmtree(tiny_raw / ".transferline/experiments")  # the Ray trials start from empty folders

    t0 = time.perf_counter()
    on_ray = label_efficiency(_params(tiny_raw, trial_runner="ray", ray_address=ray_cluster))
    ray_s = time.perf_counter() - t0
    print(f"label-efficiency, 2 trials: process pool {local_s:.1f} s, Ray (2 nodes) {ray_s:.1f} s")
    for runner, rows in (("process pool", local), ("Ray", on_ray)):
        print(runner, [(r["labels_per_class"], r["seed"], r["finetune_accuracy"], r["scratch_accuracy"]) for r in rows])

    scores = ("labels_per_class", "seed", "finetune_accuracy", "scratch_accuracy")
    assert [{k: r[k] for k in scores} for r in on_ray] == [{k: r[k] for k in scores} for r in local]
    assert all(r["finetune_accuracy"] > 0.2 and r["scratch_accuracy"] > 0.2 for r in local)  # 10 classes: chance 0.1
    runs = mlflow.search_runs(experiment_names=["transferline"], output_format="list")
    parent = max((r for r in runs if r.info.run_name == "label-efficiency"), key=lambda r: r.info.start_time)
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    names = ["label-efficiency_labels10_seed0", "label-efficiency_labels10_seed1"]
    assert sorted(r.info.run_name for r in trials) == names
    assert all(r.info.status == "FINISHED" and "pretrain.accuracy" in r.data.metrics for r in trials)
    assert len({r.data.tags["ray_node"] for r in trials}) == 2  # one trial on each Ray node
    for name in names:
        assert (tiny_raw / ".transferline/experiments" / name / "models/finetune/model.safetensors").is_file()
