"""Models (torchvision backbones included), fine-tuning strategies and
pretrained-weight loading; tiny batches on the CPU."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision
from torch import nn

from transferline.checkpoint import load_checkpoint, save_checkpoint, save_weights
from transferline.image.models import MODEL_NAMES, SmallCNN, blocks, build_model
from transferline.image.strategies import param_groups, set_batchnorm_training, unfreeze_for_epoch, warmup_cosine
from transferline.image.weights import load_pretrained

N_BLOCKS = {"small_cnn": 3, "resnet18": 5, "mobilenet_v3_small": 7}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny batches gain nothing from 2 threads, and on a shared 2-core box
    the threads' barrier waits made this file 2x slower under load."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def names_of(model: nn.Module, module: nn.Module) -> set[str]:
    ids = {id(p) for p in module.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_model_names_registered():
    assert MODEL_NAMES == ("small_cnn", "resnet18", "mobilenet_v3_small")
    with pytest.raises(ValueError, match="resnet18"):
        build_model("resnet50", 3, 1)


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_forward_backward(name, in_channels):
    torch.manual_seed(0)
    model = build_model(name, num_classes=5, in_channels=in_channels)
    out = model(torch.randn(4, in_channels, 28, 28))
    assert out.shape == (4, 5)
    assert model.backbone(torch.randn(2, in_channels, 28, 28)).shape == (2, model.feature_dim)
    assert isinstance(model.head, nn.Sequential) and isinstance(model.head[-1], nn.Linear)
    out.logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.reset_head(2)
    assert model(torch.randn(2, in_channels, 28, 28)).shape == (2, 2)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_blocks_cover_every_backbone_parameter_once(name):
    model = build_model(name, num_classes=3, in_channels=1)
    stages = blocks(model)
    assert len(stages) == N_BLOCKS[name]
    ids = [id(p) for b in stages for p in b.parameters()]
    assert len(ids) == len(set(ids))  # no parameter in two blocks
    assert set(ids) == {id(p) for p in model.backbone.parameters()}
    assert all(any(True for _ in b.parameters()) for b in stages)
    # Grouping containers add no keys to the state dict.
    assert all(k.startswith(("backbone.", "head.")) for k in model.state_dict())


def test_torchvision_module_names_kept():
    keys = set(build_model("resnet18", 3, 1).state_dict())
    assert {"backbone.conv1.weight", "backbone.layer1.0.conv1.weight", "backbone.layer4.1.bn2.running_var"} <= keys
    keys = set(build_model("mobilenet_v3_small", 3, 1).state_dict())
    assert {"backbone.features.0.0.weight", "backbone.features.12.1.weight"} <= keys


def test_linear_probe_trains_only_the_head():
    model = SmallCNN(3)
    groups = param_groups(model, "linear_probe", lr=0.1, last_n=0, lr_decay=1.0)
    assert trainable(model) == {"head.1.weight", "head.1.bias"}
    assert [g["name"] for g in groups] == ["head"]
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in model.head.parameters()}


def test_last_n_trains_head_and_top_blocks():
    model = SmallCNN(3)
    param_groups(model, "last_n", lr=0.1, last_n=1, lr_decay=1.0)
    assert trainable(model) == names_of(model, model.head) | names_of(model, model.backbone[2])
    groups = param_groups(model, "last_n", lr=0.1, last_n=2, lr_decay=1.0)
    assert [g["name"] for g in groups] == ["head", "block2", "block1"]
    assert not any(p.requires_grad for p in model.backbone[0].parameters())
    param_groups(model, "last_n", lr=0.1, last_n=99, lr_decay=1.0)  # more than there are: all
    assert trainable(model) == {n for n, _ in model.named_parameters()}


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_last_n_on_torchvision_backbones(name):
    model = build_model(name, 3, 1)
    groups = param_groups(model, "last_n", lr=0.1, last_n=2, lr_decay=1.0)
    top = blocks(model)[-2:]
    assert trainable(model) == names_of(model, model.head) | names_of(model, top[0]) | names_of(model, top[1])
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert all(p.requires_grad == (id(p) in in_groups) for p in model.parameters())


def test_full_and_discriminative():
    model = SmallCNN(3)
    param_groups(model, "linear_probe", lr=0.1, last_n=0, lr_decay=1.0)
    groups = param_groups(model, "full", lr=0.1, last_n=0, lr_decay=1.0)
    assert len(groups) == 1 and len(groups[0]["params"]) == len(list(model.parameters()))
    assert all(p.requires_grad for p in model.parameters())  # un-freezes a previous strategy

    groups = param_groups(model, "discriminative", lr=0.1, last_n=0, lr_decay=0.5)
    assert [(g["name"], g["lr"]) for g in groups] == [
        ("head", 0.1), ("block2", 0.05), ("block1", 0.025), ("block0", 0.0125)
    ]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    torch.optim.AdamW(groups, lr=0.1)  # accepted as is


def test_bad_strategy_arguments():
    with pytest.raises(ValueError, match="linear_probe"):
        param_groups(SmallCNN(3), "freeze_some", lr=0.1, last_n=1, lr_decay=0.5)
    with pytest.raises(ValueError, match="lr_decay"):
        param_groups(SmallCNN(3), "discriminative", lr=0.1, last_n=1, lr_decay=0.0)


def test_warmup_cosine_shape():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=4, total_steps=12)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))
    assert lrs[-1] < 0.05
    with pytest.raises(ValueError):
        warmup_cosine(opt, warmup_steps=5, total_steps=4)


def _one_step(model, opt, sched):
    model.train()
    loss = model(torch.randn(4, 1, 28, 28)).logsumexp(1).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()


def test_gradual_unfreezing_with_lambda_lr(tmp_path):
    torch.manual_seed(0)
    model = SmallCNN(3)
    opt = torch.optim.AdamW(param_groups(model, "gradual", lr=0.01, last_n=0, lr_decay=1.0), lr=0.01)
    sched = warmup_cosine(opt, warmup_steps=2, total_steps=12)
    counts = []
    for epoch in range(6):
        counts.append(unfreeze_for_epoch(model, opt, epoch, every=2, scheduler=sched))
        assert unfreeze_for_epoch(model, opt, epoch, every=2, scheduler=sched) == counts[-1]  # idempotent
        for _ in range(2):
            _one_step(model, opt, sched)
        # A new group follows the same schedule as the head.
        assert {g["lr"] for g in opt.param_groups} == {opt.param_groups[0]["lr"]}
    assert counts == [0, 0, 1, 1, 2, 2]
    assert [g["name"] for g in opt.param_groups] == ["head", "block2", "block1"]
    assert all(g["initial_lr"] == 0.01 for g in opt.param_groups)
    assert not any(p.requires_grad for p in model.backbone[0].parameters())
    assert all(p.requires_grad for p in model.backbone[1].parameters())

    # Resume after epoch index 5: catch up to 5 first, so the saved groups fit,
    # then the loop goes on with epoch 6 as usual.
    path = save_checkpoint(tmp_path / "c.safetensors", model, opt, sched, {"epoch": 6})
    model2 = SmallCNN(3)
    opt2 = torch.optim.AdamW(param_groups(model2, "gradual", lr=0.01, last_n=0, lr_decay=1.0), lr=0.01)
    assert unfreeze_for_epoch(model2, opt2, 5, every=2) == 2
    sched2 = warmup_cosine(opt2, warmup_steps=2, total_steps=12)
    assert load_checkpoint(path, model2, opt2, sched2) == {"epoch": 6}
    assert sched2.last_epoch == sched.last_epoch == 12
    assert opt2.param_groups[1]["lr"] == opt.param_groups[1]["lr"]
    assert unfreeze_for_epoch(model2, opt2, 6, every=2, scheduler=sched2) == 3
    _one_step(model2, opt2, sched2)
    assert len(sched2.get_last_lr()) == 4


def test_frozen_batchnorm_keeps_running_stats():
    torch.manual_seed(0)
    model = SmallCNN(3)
    param_groups(model, "last_n", lr=0.1, last_n=1, lr_decay=1.0)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    frozen_bns = [m for b in blocks(model)[:2] for m in b.modules() if isinstance(m, nn.BatchNorm2d)]
    before = {id(m): m.running_mean.clone() for m in bns}
    model.train()
    set_batchnorm_training(model, train_bn=False)
    model(torch.randn(8, 1, 28, 28) * 3 + 1)
    for m in bns:
        frozen = any(m is f for f in frozen_bns)
        assert torch.equal(m.running_mean, before[id(m)]) == frozen
        assert m.training != frozen
    set_batchnorm_training(model, train_bn=True)  # back to the model's mode
    assert all(m.training for m in bns)


def test_load_own_safetensors(tmp_path):
    src = SmallCNN(3)
    src.backbone[0][1].running_mean.fill_(0.5)
    path = save_weights(src, tmp_path / "model.safetensors", {"arch": "small_cnn"})
    dst = SmallCNN(7)
    report = load_pretrained(dst, path)
    backbone_keys = [k for k in dst.state_dict() if k.startswith("backbone.")]
    assert sorted(report["loaded"]) == sorted(backbone_keys)
    assert report["missing"] == report["skipped_shape"] == report["adapted"] == report["unexpected"] == []
    assert sorted(report["ignored"]) == ["head.1.bias", "head.1.weight"]
    for k in backbone_keys:
        assert torch.equal(dst.state_dict()[k], src.state_dict()[k])
    assert dst.head[-1].out_features == 7


def test_load_own_checkpoint_and_3_to_1_channels(tmp_path):
    src = SmallCNN(3, in_channels=3)
    opt = torch.optim.AdamW(src.parameters())
    path = save_checkpoint(tmp_path / "checkpoint.safetensors", src, opt, None, {})  # "model." prefixed
    dst = SmallCNN(3, in_channels=1)
    report = load_pretrained(dst, path)
    assert report["adapted"] == ["backbone.0.0.weight"]
    assert torch.allclose(dst.backbone[0][0].weight, src.backbone[0][0].weight.sum(1, keepdim=True))
    assert report["missing"] == []


def test_load_torchvision_resnet18_state_dict(tmp_path, caplog):
    tv = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pt"
    torch.save({"state_dict": tv.state_dict(), "epoch": 3}, path)
    model = build_model("resnet18", 4, 1)
    with caplog.at_level(logging.WARNING, logger="transferline.weights"):
        report = load_pretrained(model, path)
    assert "backbone.layer1.0.conv1.weight" in report["loaded"]
    assert torch.equal(model.backbone.layer3[1].conv2.weight, tv.layer3[1].conv2.weight)
    assert torch.equal(model.backbone.bn1.running_var, tv.bn1.running_var)
    # torchvision's conv1 is 7x7 for 224px ImageNet; ours is 3x3: only channels are adapted.
    assert report["skipped_shape"] == ["backbone.conv1.weight"]
    assert "backbone.conv1.weight" in caplog.text
    assert sorted(report["ignored"]) == ["fc.bias", "fc.weight"]
    assert report["missing"] == report["unexpected"] == []
    assert len(report["loaded"]) == len(model.backbone.state_dict()) - 1


def test_load_torchvision_mobilenet_adapts_first_conv(tmp_path):
    tv = torchvision.models.mobilenet_v3_small(weights=None)
    path = tmp_path / "mobilenet.pth"
    torch.save(tv.state_dict(), path)
    model = build_model("mobilenet_v3_small", 4, 1)
    report = load_pretrained(model, path)
    assert report["adapted"] == ["backbone.features.0.0.weight"]
    assert report["skipped_shape"] == report["missing"] == report["unexpected"] == []
    assert all(k.startswith("classifier.") for k in report["ignored"])
    # Summing the RGB filters answers a grey image as RGB filters answer it repeated 3x.
    grey = torch.randn(2, 1, 8, 8)
    ours = nn.functional.conv2d(grey, model.backbone.features[0][0].weight, padding=1)
    theirs = nn.functional.conv2d(grey.expand(-1, 3, -1, -1), tv.features[0][0].weight, padding=1)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_load_nothing_matching_raises(tmp_path):
    path = tmp_path / "unrelated.pt"
    torch.save({"encoder.weight": torch.zeros(3, 3), "fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ValueError, match="unrelated.pt"):
        load_pretrained(SmallCNN(3), path)
