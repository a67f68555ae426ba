"""The locked torch/torchvision pair works on a CPU-only machine."""

from __future__ import annotations

import torch
import torchvision
from torchvision.ops import nms
from torchvision.transforms import v2


def test_torchvision_model_forward_backward_on_cpu():
    model = torchvision.models.resnet18(num_classes=3)
    x = torch.randn(2, 3, 32, 32)
    loss = model(x).logsumexp(1).mean()
    loss.backward()
    assert model.conv1.weight.grad is not None and torch.isfinite(model.conv1.weight.grad).all()


def test_transforms_v2_and_compiled_ops():
    aug = v2.Compose([v2.RandomResizedCrop(24, antialias=True), v2.ToDtype(torch.float32, scale=True)])
    out = aug(torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8))
    assert out.shape == (1, 24, 24) and out.max() <= 1
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
