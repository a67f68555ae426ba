"""Self-supervised pretraining on the unlabelled pool: the pool never holds a
test image, each objective learns, resumes, and feeds the same finetune stage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from conftest import tiny_raw_params
from transferline.errors import StageError
from transferline.image.finetune import initialised_model, train_target
from transferline.image import preprocess, split
from transferline.image.data import check_pool, image_hashes, load_set
from transferline.image.pretrain import run as pretrain
from transferline.candidates import folder_name
from transferline.checkpoint import load_weights, read_meta
from transferline.image import finetune
from transferline.config import parse_params
from transferline.paths import Paths
from transferline.io import load_arrays
from transferline.image.objectives import nt_xent


def _ssl_params(objective: str, **pretrain):
    return parse_params(tiny_raw_params(
        split={"source_max_samples": 150},
        pretrain={"objective": objective, "epochs": 3, "batch_size": 64, "lr": 0.003, **pretrain},
        finetune={"epochs": 1},
    ))


def test_pool_holds_no_test_image(tiny_raw, builtin_sets):
    # duplicate some test-set candidates so dedupe is exercised
    raw = load_arrays(tiny_raw / "data/raw/target.npz")
    x = np.concatenate([raw["x"], raw["x"][:40]])
    y = np.concatenate([raw["y"], raw["y"][:40]])
    np.savez(tiny_raw / "data/raw/target.npz", x=x, y=y)
    for dedupe in (True, False):
        params = parse_params(tiny_raw_params(split={"dedupe": dedupe}))
        counts = split.run(params, params.paths)
        tgt, pool = load_arrays(tiny_raw / "data/split/target.npz"), load_arrays(tiny_raw / "data/split/pool.npz")
        assert set(pool) == {"x_target"}  # no labels
        pool_h = set(image_hashes(pool["x_target"]))
        labelled = set(image_hashes(np.concatenate([tgt["x_train"], tgt["x_val"], tgt["x_test"]])))
        assert counts["target"]["pool"] == len(pool["x_target"]) > 50
        assert not pool_h & set(image_hashes(tgt["x_test"]))
        assert not pool_h & labelled
        assert len(pool_h) == len(pool["x_target"])  # one copy each
    hashes = image_hashes(x)
    with pytest.raises(StageError, match="pool holds 2 test image"):
        check_pool(hashes, np.array([0, 1, 2]), np.array([1, 2, 5]))


def test_nt_xent_prefers_matching_views():
    z = torch.randn(16, 8)
    assert nt_xent(z, z + 0.01 * torch.randn_like(z), 0.2) < nt_xent(z, torch.randn(16, 8), 0.2)


@pytest.mark.parametrize("objective", ["denoising", "contrastive"])
def test_objective_learns_and_feeds_finetune(tiny_raw, objective):
    params = _ssl_params(objective)
    split.run(params, params.paths)
    preprocess.run(params, params.paths)
    history = pretrain(params, params.paths)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert 0 <= history[-1]["val_acc"] <= 1
    weights = tiny_raw / "models/pretrain/model.safetensors"
    assert read_meta(weights)["objective"] == objective
    assert not (tiny_raw / "models/pretrain/checkpoint.safetensors").exists()
    # the same finetune stage loads it: every backbone tensor, nothing skipped
    model, report = initialised_model(params, "pretrain", Paths(), 10)
    n_backbone = sum(k.startswith("backbone.") for k in model.state_dict())
    assert report["loaded"] == n_backbone and report["missing"] == report["skipped_shape"] == 0
    _, ft = train_target(params, params.paths, "pretrain", "finetune")
    assert len(ft) == 1 and 0 <= ft[0]["val_acc"] <= 1


def test_target_only_pool(tiny_raw):
    supervised = _ssl_params("supervised")
    split.run(supervised, supervised.paths)
    preprocess.run(supervised, supervised.paths)  # no objective reads the pool: it stays empty, new target data leaves pretrain alone
    assert len(load_set(Paths(), "pool")["x_target"]) == 0
    params = _ssl_params("denoising", epochs=1, unlabelled=["target"])
    preprocess.run(params, params.paths)
    assert len(load_set(Paths(), "pool")["x_target"]) > 50
    pretrain(params, params.paths)
    meta = read_meta(tiny_raw / "models/pretrain/model.safetensors")
    assert meta["unlabelled"] == ["target"] and meta["images"] == len(load_set(Paths(), "pool")["x_target"])


def test_adapted_starts_are_candidates(tiny_raw):
    """pretrain.image.adapt builds pretrain-adapt (the source backbone, continued on the target pool)
    and adapt (random start); finetune estimates, trains and scores each, and keeps the best."""
    params = parse_params(tiny_raw_params(
        split={"source_max_samples": 150},
        pretrain={"epochs": 1, "adapt": {"starts": ["pretrain", "scratch"], "epochs": 1, "batch_size": 64}},
        finetune={"epochs": 2, "candidates": ["scratch", "pretrain", "pretrain-adapt", "adapt"]}))
    split.run(params, params.paths)
    preprocess.run(params, params.paths)
    pretrain(params, params.paths)
    folder = tiny_raw / "models/pretrain"
    assert read_meta(folder / "pretrain-adapt.safetensors")["init"].endswith("model.safetensors")
    assert read_meta(folder / "adapt.safetensors")["init"] == "random"
    assert (folder / "pretrain-adapt_history.json").is_file() and not list(folder.glob("*checkpoint*"))
    result = finetune.run(params, params.paths)
    rows = {r["candidate"]: r for r in result["candidates"]}
    assert list(rows) == ["scratch", "pretrain", "pretrain-adapt", "adapt"]
    assert all(isinstance(r["estimate"], float) and 0 <= r["val_acc"] <= 1 for r in rows.values())
    best = max(r["val_acc"] for r in rows.values())
    lead = best - rows["scratch"]["val_acc"]  # a start must lead scratch by min_val_gain (0.01)
    assert result["winner"] == "scratch" if lead < 0.01 - 1e-9 else rows[result["winner"]]["val_acc"] == best
    # the registered weights are the winner's
    winner = load_weights(tiny_raw / "models/finetune/model.safetensors")
    chosen = load_weights(params.paths.weights(folder_name(result["winner"])))
    assert all(torch.equal(winner[k], chosen[k]) for k in winner)


@pytest.mark.slow
def test_killed_ssl_pretrain_resumes(tiny_raw):
    raw = tiny_raw_params(pretrain={"objective": "denoising", "epochs": 12, "batch_size": 32, "unlabelled": ["source"]},
                          split={"source_max_samples": 100})
    (tiny_raw / "params.yaml").write_text(yaml.safe_dump(raw))
    params = parse_params(raw)
    split.run(params, params.paths)
    preprocess.run(params, params.paths)
    ckpt = tiny_raw / "models/pretrain/checkpoint.safetensors"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tasks.pretrain"], cwd=tiny_raw, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600  # a loaded CI machine can take minutes to import torch and start
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and read_meta(ckpt).get("state", {}).get("epoch", 0) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "no checkpoint was written before the deadline"
    stopped_at = read_meta(ckpt)["state"]["epoch"]
    assert 2 <= stopped_at < 12, "the run finished before it could be interrupted"
    done = subprocess.run([sys.executable, "-m", "tasks.pretrain"], cwd=tiny_raw, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"resuming pretrain (denoising) from epoch {stopped_at}" in done.stderr
    history = json.loads((tiny_raw / "reports/pretrain_history.json").read_text())
    assert [r["epoch"] for r in history] == list(range(1, 13))
    assert not ckpt.exists() and (tiny_raw / "models/pretrain/model.safetensors").exists()


def test_objective_params():
    params = parse_params(tiny_raw_params(experiments={"objectives": [
        "denoising", {"objective": "contrastive", "unlabelled": ["target"], "epochs": 4}]}))
    assert [o.label() for o in params.image.experiments.objectives] == ["denoising", "contrastive_target_4ep"]
    from transferline.config import ParamsError

    with pytest.raises(ParamsError, match="pretrain.image.objective"):
        parse_params(tiny_raw_params(pretrain={"objective": "masked"}))
    with pytest.raises(ParamsError, match="pretrain.image.unlabelled"):
        parse_params(tiny_raw_params(pretrain={"unlabelled": []}))
