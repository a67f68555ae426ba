"""Data-parallel training on two gloo processes (CPU): the step is the
single-process step, the ranks stay equal, the shards are disjoint, only rank
0 writes, a killed two-process stage resumes, and pretrain + finetune run
under torchrun through `dvc repro`. `pytest -m distributed` runs these alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml

from conftest import make_project, tiny_raw_params
from transferline.checkpoint import read_meta
from transferline.config import parse_params

pytestmark = pytest.mark.distributed
WORLD = 2


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, builtin_sets) -> list[Path]:
    """Run every scenario of tests/kit/ddp.py once on two spawned gloo ranks; their output folders."""
    from kit import ddp
    from transferline.image import preprocess, split
    from transferline.io import save_arrays, write_json
    from transferline.config.image import ANIMAL_MNIST, MNIST

    root = tmp_path_factory.mktemp("ddp")
    # a tiny processed target set for the stage-level scenario
    for name in ("source", "target"):
        x, y = builtin_sets[name]
        idx = torch.cat([torch.nonzero(torch.as_tensor(y) == c).flatten()[:40] for c in range(10)]).numpy()
        save_arrays(root / "data/raw" / f"{name}.npz", x=x[idx], y=y[idx])
    write_json(root / "data/raw/meta.json", {
        "source": {"origin": "test", "classes": list(MNIST.classes), "n": 400},
        "target": {"origin": "test", "classes": list(ANIMAL_MNIST.classes), "n": 400, "unreadable": []}})
    raw = tiny_raw_params(finetune={"candidates": ["scratch"], "epochs": 2, "patience": 1})
    paths = parse_params(raw).paths.under(root)
    split.run(parse_params(raw), paths)
    preprocess.run(parse_params(raw), paths)
    out = root / "ranks"
    mp.spawn(ddp.worker, args=(WORLD, f"file://{root}/rendezvous", str(out), str(paths.processed), raw),
             nprocs=WORLD, join=True)
    return [out / f"rank{r}" for r in range(WORLD)]


def _load(folder: Path, name: str) -> dict:
    return torch.load(folder / name, weights_only=False)


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=atol, rtol=0), f"{key} differs by " \
            f"{(a[key].float() - b[key].float()).abs().max():.3g}"


def test_a_step_on_two_half_batches_is_the_step_on_the_whole_batch(ranks):
    """SGD, no batch norm: DDP's averaged gradient of two half-batch means is the full batch's mean (float32 sums)."""
    r0, r1 = (_load(r, "one_step.pt") for r in ranks)
    assert len(r0["idx"]) == len(r1["idx"]) == 8 and not set(r0["idx"]) & set(r1["idx"])
    for r in (r0, r1):
        _assert_same(r["ddp"], r["single"], atol=1e-6)


def test_shards_are_disjoint_cover_the_data_and_reshuffle(ranks):
    epochs = [_load(r, "shards.pt") for r in ranks]
    for e in range(2):
        mine, theirs = ([i for batch in epochs[r][e] for i in batch] for r in range(WORLD))
        assert not set(mine) & set(theirs)
        assert sorted(mine + theirs) == list(range(50))
        assert [len(b) for b in epochs[0][e]] == [5] * 5  # global batch 10 = 2 ranks x 5
    assert epochs[0][0] != epochs[0][1], "the same order every epoch"


@pytest.mark.parametrize("strategy", ["full", "gradual"])
def test_ranks_hold_identical_weights_after_training(ranks, strategy):
    """The real image fit, started from different weights per rank, batch norm included; for
    gradual, block 1 of 3 is unfrozen for the last epoch (DDP rebuilt) and must move, in step.
    (Rank 0's starting weights are the ones DDP broadcasts: only training can move them.)"""
    r0, r1 = (_load(r, f"fit_{strategy}.pt") for r in ranks)
    _assert_same(r0["state"], r1["state"])
    assert r0["history"] == [{**row, "seconds": r0["history"][i]["seconds"]} for i, row in enumerate(r1["history"])]
    assert [row["world_size"] for row in r0["history"]] == [WORLD] * 3
    assert r0["block1_moved"]


def test_text_loops_keep_ranks_equal(ranks):
    r0, r1 = (_load(r, "text.pt") for r in ranks)
    _assert_same(r0["mlm"], r1["mlm"])
    _assert_same(r0["clf"], r1["clf"])
    assert all(row["world_size"] == WORLD for history in r0["histories"] for row in history)
    assert (ranks[0] / "mlm.safetensors").is_file() and not (ranks[1] / "mlm.safetensors").exists()


def test_only_rank_0_writes(ranks):
    """finetune.run on both ranks, each pointed at its own folder: rank 0's holds the weights and
    histories, rank 1's nothing but the data it was given."""
    main, other = (r / "project" for r in ranks)
    history = json.loads((main / "reports/finetune_history.json").read_text())
    assert history[-1]["world_size"] == WORLD
    assert (main / "models/finetune/model.safetensors").is_file()
    assert (main / "models/scratch/model.safetensors").is_file()
    written = sorted(str(p.relative_to(other)) for p in other.rglob("*") if p.is_file())
    assert all(p.startswith("data/processed") for p in written), written


def test_killed_two_process_stage_resumes(tiny_raw):
    """`python -m tasks.pretrain` with nproc_per_node 2 (torchrun), SIGKILLed mid-run, then run again."""
    from transferline.image import preprocess, split

    raw = tiny_raw_params(pretrain={"epochs": 20, "batch_size": 32}, split={"source_max_samples": 200})
    raw["distributed"] = {"nproc_per_node": WORLD}
    (tiny_raw / "params.yaml").write_text(yaml.safe_dump(raw))
    params = parse_params(raw)
    split.run(params, params.paths)
    preprocess.run(params, params.paths)
    ckpt = tiny_raw / "models/pretrain/checkpoint.safetensors"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tasks.pretrain"], cwd=tiny_raw, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and read_meta(ckpt).get("state", {}).get("epoch", 0) >= 2:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun dies at once; its workers follow (PR_SET_PDEATHSIG)
    proc.wait()
    stopped_at = read_meta(ckpt)["state"]["epoch"]
    assert 2 <= stopped_at < 20, "the run finished before it could be interrupted"

    done = subprocess.run([sys.executable, "-m", "tasks.pretrain"], cwd=tiny_raw, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming pretrain from epoch {stopped_at}" in done.stderr
    history = json.loads((tiny_raw / "reports/pretrain_history.json").read_text())
    assert [r["epoch"] for r in history] == list(range(1, 21))
    assert all(r["world_size"] == WORLD for r in history)
    assert history[-1]["val_acc"] > 0.3  # digits, 180 training images
    assert not ckpt.exists() and (tiny_raw / "models/pretrain/model.safetensors").exists()


def test_pretrain_and_finetune_run_under_torchrun_through_dvc(tmp_path):
    """A fresh project with distributed.nproc_per_node 2: `dvc repro finetune` runs every stage up to
    finetune, the two training stages under torchrun, and DVC sees nothing left to do."""
    raw = tiny_raw_params(finetune={"epochs": 8})
    raw["distributed"] = {"nproc_per_node": WORLD}
    project = make_project(tmp_path / "proj", raw)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    done = subprocess.run([sys.executable, "-m", "dvc", "repro", "finetune"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    for name in ("pretrain", "finetune", "scratch"):
        history = json.loads((project / f"reports/{name}_history.json").read_text())
        assert {r["world_size"] for r in history} == {WORLD}, name
    finetuned = json.loads((project / "reports/finetune_history.json").read_text())
    assert max(r["val_acc"] for r in finetuned) > 0.25  # 10 classes, 10 labels each: well above chance
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "finetune", "--json"], cwd=project, env=env,
                            capture_output=True, text=True, check=True)
    assert json.loads(status.stdout) == {}
