"""Image models. Every model is `backbone` (features, (N, feature_dim)) +
`head` (an nn.Sequential ending in nn.Linear), so fine-tuning swaps the head
and keeps the backbone. `blocks(model)` lists the backbone's stages from input
to output, for last-N unfreezing and per-block learning rates
(`transferline.image.strategies`).

The torchvision models keep torchvision's module names inside `backbone`
(`backbone.layer1.0.conv1.weight`, `backbone.features.0.0.weight`), so a
torchvision state dict maps onto them by prefixing `backbone.`
(`transferline.image.weights`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from transferline.checkpoint import load_weights, read_meta
from transferline.config.image import MODEL_NAMES


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class Classifier(nn.Module):
    """`backbone` + `head`; subclasses build the backbone and say what its blocks are."""

    backbone: nn.Module
    head: nn.Sequential
    feature_dim: int

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def reset_head(self, num_classes: int) -> None:
        self.head[-1] = nn.Linear(self.feature_dim, num_classes)

    def blocks(self) -> list[nn.Module]:
        """The backbone's stages from input to output; together they hold every backbone parameter."""
        raise NotImplementedError


class SmallCNN(Classifier):
    """Three conv blocks (32-64-128) and global pooling: ~290k parameters.

    Input (N, C, H, W); any H, W >= 8 works thanks to the adaptive pooling.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, dropout: float = 0.3) -> None:
        backbone = nn.Sequential(
            conv_block(in_channels, 32),  # (N, 32, H/2, W/2)
            conv_block(32, 64),  # (N, 64, H/4, W/4)
            conv_block(64, 128),  # (N, 128, H/8, W/8)
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),  # (N, 128)
        )
        super().__init__(backbone, 128, num_classes, dropout)

    def blocks(self) -> list[nn.Module]:
        return list(self.backbone[:3])


def _small_input_conv(in_channels: int, like: nn.Conv2d, kernel_size: int, stride: int) -> nn.Conv2d:
    """A replacement first conv, initialised the way torchvision initialises convs."""
    padding = kernel_size // 2
    conv = nn.Conv2d(in_channels, like.out_channels, kernel_size, stride=stride, padding=padding, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


class ResNetBackbone(nn.Module):
    """torchvision resnet18 for 28x28 inputs: 3x3 stride-1 `conv1`, no maxpool.

    The ImageNet stem (7x7 stride 2 + maxpool) would shrink 28x28 to 7x7
    before layer1 and to 1x1 by layer4; this one keeps 28 -> 28/14/7/4.
    Module names are torchvision's (conv1, bn1, layer1..layer4); `fc` is gone.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        import torchvision  # lazily: importing it costs seconds, and SmallCNN users never need it

        net = torchvision.models.resnet18(weights=None)
        self.conv1 = _small_input_conv(in_channels, net.conv1, kernel_size=3, stride=1)
        self.bn1, self.relu = net.bn1, net.relu
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = net.fc.in_features  # 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def blocks(self) -> list[nn.Module]:
        # The stem is three separate modules (torchvision's names); group them
        # in an unregistered Sequential so it is one block without new keys.
        return [nn.Sequential(self.conv1, self.bn1, self.relu), self.layer1, self.layer2, self.layer3, self.layer4]


class MobileNetBackbone(nn.Module):
    """torchvision mobilenet_v3_small `features` with a stride-1 first conv.

    28x28 -> 28 (stem) -> 14 -> 7 -> 4 -> 2 at the last conv (576 channels).
    Module names are torchvision's (`features.<i>...`); `classifier` is gone.
    """

    # `features` children grouped by output width: stem, 16, 24, 40, 48, 96
    # channels, then the final 1x1 conv to 576; 7 blocks from 13 children.
    GROUPS: tuple[tuple[int, ...], ...] = ((0,), (1,), (2, 3), (4, 5, 6), (7, 8), (9, 10, 11), (12,))

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        import torchvision  # lazily, see ResNetBackbone

        net = torchvision.models.mobilenet_v3_small(weights=None)
        first = net.features[0][0]
        net.features[0][0] = _small_input_conv(in_channels, first, kernel_size=first.kernel_size[0], stride=1)
        self.features = net.features
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = net.features[-1].out_channels  # 576
        assert sorted(i for g in self.GROUPS for i in g) == list(range(len(self.features))), "GROUPS out of date"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(self.features(x)), 1)

    def blocks(self) -> list[nn.Module]:
        return [nn.Sequential(*(self.features[i] for i in group)) for group in self.GROUPS]


class ResNet18(Classifier):
    """torchvision resnet18 adapted to small images: ~11.2M parameters, 512 features."""

    def __init__(self, num_classes: int, in_channels: int = 1, dropout: float = 0.2) -> None:
        backbone = ResNetBackbone(in_channels)
        super().__init__(backbone, backbone.feature_dim, num_classes, dropout)

    def blocks(self) -> list[nn.Module]:
        return self.backbone.blocks()


class MobileNetV3Small(Classifier):
    """torchvision mobilenet_v3_small adapted to small images: ~0.93M backbone parameters, 576 features.

    The head is dropout + one Linear, like the others, not torchvision's
    576 -> 1024 -> classes classifier: transfer keeps only the backbone anyway.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, dropout: float = 0.2) -> None:
        backbone = MobileNetBackbone(in_channels)
        super().__init__(backbone, backbone.feature_dim, num_classes, dropout)

    def blocks(self) -> list[nn.Module]:
        return self.backbone.blocks()


MODELS: dict[str, type[Classifier]] = {
    "small_cnn": SmallCNN,
    "resnet18": ResNet18,
    "mobilenet_v3_small": MobileNetV3Small,
}
# the schema (transferline/config/image.py) names them without importing torch
assert tuple(MODELS) == MODEL_NAMES, "transferline/config/image.py MODEL_NAMES must match MODELS"


def build_model(name: str, num_classes: int, in_channels: int) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    # Channels-last (NHWC) weights: the CPU's oneDNN convolutions run it faster (small_cnn on 2 cores:
    # training steps about 17 % less time, inference about 40 %; resnet18 and mobilenet alike), and
    # on a CPU the input needs no conversion (a convolution follows its weights' layout). The format is a
    # layout only: state dicts, checkpoints and safetensors files stay the same.
    return MODELS[name](num_classes=num_classes, in_channels=in_channels).to(memory_format=torch.channels_last)


def load_classifier(weights: Path) -> nn.Module:
    """A saved classifier (safetensors with its arch in the metadata), in eval mode."""
    meta = read_meta(weights)
    model = build_model(meta["arch"], int(meta["num_classes"]), int(meta["in_channels"]))
    model.load_state_dict(load_weights(weights))
    return model.eval()


def blocks(model: nn.Module) -> list[nn.Module]:
    """The backbone's blocks from input to output (SmallCNN: 3, resnet18: 5, mobilenet_v3_small: 7).

    The containers may be built on each call (they only group existing
    modules, never add parameters), so compare their parameters, not the
    block objects themselves.
    """
    return model.blocks()  # type: ignore[operator]


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Logits for x, (N, classes), on the CPU."""
    model.eval()
    out = [model(x[i : i + batch_size].to(device, torch.float32)).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0)
