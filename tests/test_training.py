"""Checkpoints round-trip through safetensors, a killed stage resumes, and a training loop keeps the memory it frees."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch
import pytest
import yaml

from conftest import tiny_raw_params
from transferline.image import preprocess, split
from transferline.checkpoint import load_checkpoint, read_meta, save_checkpoint
from transferline.config import parse_params
from transferline.paths import Paths
from transferline.image.models import SmallCNN
from transferline.runtime import glibc_malloc


def test_checkpoint_round_trip(tmp_path):
    model = SmallCNN(4)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=10)
    model(torch.randn(8, 1, 28, 28)).sum().backward()
    opt.step()
    sched.step()
    path = save_checkpoint(tmp_path / "c.safetensors", model, opt, sched, {"epoch": 3})
    model2 = SmallCNN(4)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=0.01)
    sched2 = torch.optim.lr_scheduler.OneCycleLR(opt2, max_lr=0.01, total_steps=10)
    assert load_checkpoint(path, model2, opt2, sched2) == {"epoch": 3}
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], opt2.state_dict()["state"][0]["exp_avg"])
    assert sched2.state_dict()["last_epoch"] == 1
    assert read_meta(path)["state"]["epoch"] == 3


def test_killed_pretrain_resumes_from_last_epoch(tiny_raw):
    raw = tiny_raw_params(pretrain={"epochs": 20, "batch_size": 32}, split={"source_max_samples": 200})
    (tiny_raw / "params.yaml").write_text(yaml.safe_dump(raw))
    params = parse_params(raw)
    split.run(params, params.paths)
    preprocess.run(params, params.paths)
    ckpt = tiny_raw / "models/pretrain/checkpoint.safetensors"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tasks.pretrain"], cwd=tiny_raw, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and read_meta(ckpt).get("state", {}).get("epoch", 0) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = read_meta(ckpt)["state"]["epoch"]
    assert 2 <= stopped_at < 20, "the run finished before it could be interrupted"

    done = subprocess.run([sys.executable, "-m", "tasks.pretrain"], cwd=tiny_raw, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"resuming pretrain from epoch {stopped_at}" in done.stderr
    history = json.loads((tiny_raw / "reports/pretrain_history.json").read_text())
    assert [r["epoch"] for r in history] == list(range(1, 21))
    assert history[-1]["val_acc"] > 0.3  # digits, 180 training images
    assert not ckpt.exists() and (tiny_raw / "models/pretrain/model.safetensors").exists()


def _target_tensors(tiny_raw):
    from transferline.image.data import load_set

    params = parse_params(tiny_raw_params())
    split.run(params, params.paths)
    preprocess.run(params, params.paths)
    return load_set(Paths(), "target")


def test_linear_probe_trains_only_the_head(tiny_raw):
    from transferline.config.image import FinetuneParams
    from transferline.image.train import fit

    data = _target_tensors(tiny_raw)
    model = SmallCNN(10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = FinetuneParams(epochs=2, batch_size=32, lr=0.01, strategy="linear_probe", train_bn=False, augment=True)
    fit(model, (data["x_train"], data["y_train"]), (data["x_val"], data["y_val"]), cfg,
        torch.device("cpu"), torch.Generator().manual_seed(0))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))
    assert not torch.equal(before["head.1.weight"], after["head.1.weight"])


def test_early_stopping_keeps_the_best_epoch(tiny_raw, tmp_path):
    from transferline.config.image import FinetuneParams
    from transferline.image.models import build_model
    from transferline.image.train import fit, loss_and_accuracy

    data = _target_tensors(tiny_raw)
    model = build_model("small_cnn", 10, 1)  # channels-last, as every stage builds it
    cfg = FinetuneParams(epochs=40, batch_size=32, lr=0.003, patience=2)
    # with a checkpoint, each best epoch is saved (safetensors refuses channels-last tensors)
    history = fit(model, (data["x_train"], data["y_train"]), (data["x_val"], data["y_val"]), cfg,
                  torch.device("cpu"), torch.Generator().manual_seed(0), checkpoint=tmp_path / "fit.ckpt")
    assert len(history) < 40
    best = max(r["val_acc"] for r in history)
    assert loss_and_accuracy(model, data["x_val"], data["y_val"], 512, torch.device("cpu"))[1] == pytest.approx(best, abs=1e-6)


def test_a_streamed_source_set_trains_exactly_as_the_set_in_memory(tiny_raw):
    """pretrain.image.loader_workers: the same batches in the same order, read from the cache file
    by worker processes, give the same weights and history as the tensors in memory."""
    from transferline.config.image import PretrainParams
    from transferline.image.data import CachedRows, load_set
    from transferline.image.models import predict
    from transferline.image.train import fit

    _target_tensors(tiny_raw)
    whole = load_set(Paths(), "source")
    streamed = load_set(Paths(), "source", streamed=("x_train",))
    assert isinstance(streamed["x_train"], CachedRows) and torch.equal(streamed["x_val"], whole["x_val"])
    assert torch.equal(streamed["x_train"][[5, 0, 3]], whole["x_train"][[5, 0, 3]])
    probe, cpu = SmallCNN(10), torch.device("cpu")  # finetune's LogME features read the rows in ranges
    assert torch.equal(predict(probe, streamed["x_train"], 7, cpu), predict(probe, whole["x_train"], 7, cpu))
    runs = {}
    for name, data in (("memory", whole), ("streamed", streamed)):
        torch.manual_seed(0)
        model = SmallCNN(10)
        cfg = PretrainParams(epochs=2, batch_size=32, lr=0.003, loader_workers=2)
        history = fit(model, (data["x_train"], data["y_train"]), (data["x_val"], data["y_val"]), cfg,
                      cpu, torch.Generator().manual_seed(0))
        runs[name] = ([{k: v for k, v in r.items() if k != "seconds"} for r in history], model.state_dict())
    assert runs["memory"][0] == runs["streamed"][0]
    assert all(torch.equal(v, runs["streamed"][1][k]) for k, v in runs["memory"][1].items())


def test_streaming_is_for_supervised_pretraining():
    from transferline.config.image import PretrainParams

    with pytest.raises(ValueError, match="loader_workers streams supervised pretraining only"):
        PretrainParams(epochs=1, batch_size=8, lr=0.1, loader_workers=2, objective="denoising")


def test_finetune_streams_the_target_train_split_to_the_same_choice(tiny_raw):
    """finetune.image.loader_workers: every candidate trained from the cache file, the same figures."""
    from transferline.image import finetune, pretrain

    _target_tensors(tiny_raw)
    results = {}
    for workers in (0, 2):
        params = parse_params(tiny_raw_params(finetune={"epochs": 2, "loader_workers": workers}))
        if workers == 0:
            pretrain.run(params, params.paths)
        done = finetune.run(params, params.paths)
        results[workers] = [{k: v for k, v in r.items() if k != "seconds"} for r in done["candidates"]], done["winner"]
    assert results[0] == results[2] and len(results[0][0]) == 2


def test_augmentation_fills_what_it_uncovers_with_each_images_own_background():
    """A shifted photo's uncovered border takes its backdrop's colour, per channel, not a fixed
    value (a frame of another colour around every coloured image); MNIST-like sets, dark at the
    edge, keep their darkest value as before."""
    from torchvision.transforms import v2

    from transferline.image.train import augmented, background

    colours = torch.tensor([[0.2, 0.5, 0.9], [0.7, 0.1, 0.3]])
    x = colours[:, :, None, None].repeat(1, 1, 16, 16)
    x[:, :, 5:11, 5:11] = torch.tensor([1.0, 1.0, 0.0])[None, :, None, None]  # a yellow square
    assert torch.equal(background(x), colours[:, :, None, None])
    torch.manual_seed(0)
    out = augmented(x, v2.RandomAffine(degrees=0, translate=(0.3, 0.3)))
    for img, colour in zip(out, colours):
        pixels = {tuple(p.tolist()) for p in img.flatten(1).T}
        assert pixels <= {tuple(colour.tolist()), (1.0, 1.0, 0.0)}, pixels
    digits = torch.zeros(3, 1, 28, 28) - 0.4
    digits[:, :, 8:20, 10:18] = 2.5
    assert torch.equal(background(digits), digits.amin(dim=(1, 2, 3), keepdim=True))


# A training step's pattern, in C so that nothing else lands between: eight 16 MB blocks written,
# freed together, allocated again the next step.
CHURN = """
import ctypes, resource, torch
{setup}
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    blocks = [libc.malloc(16 << 20) for _ in range(8)]
    for block in blocks:
        ctypes.memset(block, 1, 16 << 20)
    for block in blocks:
        libc.free(block)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
FIT_FIRST = """
from transferline.config.image import TrainParams
from transferline.image.models import build_model
from transferline.image.train import fit
x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
fit(build_model("small_cnn", 10, 1), (x, y), (x[:16], y[:16]), TrainParams(epochs=1, batch_size=32, lr=1e-3),
    torch.device("cpu"), torch.Generator().manual_seed(0), desc="t")
"""


@pytest.mark.skipif(not glibc_malloc(), reason="the settings are glibc malloc's (transferline.runtime.keep_freed_memory)")
def test_after_a_training_loop_freed_memory_is_reused_not_faulted_in_again():
    def faults(setup: str) -> int:
        done = subprocess.run([sys.executable, "-c", CHURN.format(setup=setup)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return int(done.stdout.split()[-1])

    default, after_fit = faults(""), faults(FIT_FIRST)
    # default: each round's 128 MB handed back to the OS and faulted in again (32k pages a round);
    # after a training loop (transferline.runtime.keep_freed_memory): kept, faulted in once
    assert default > 150_000, default
    assert after_fit * 3 < default, (after_fit, default)
