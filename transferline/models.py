"""Image models. Every model is `backbone` (features) + `head` (classifier),
so fine-tuning swaps the head and keeps the backbone."""

from __future__ import annotations

import torch
from torch import nn


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


class SmallCNN(nn.Module):
    """Three conv blocks (32-64-128) and global pooling: ~290k parameters.

    Input (N, C, H, W); any H, W >= 8 works thanks to the adaptive pooling.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, dropout: float = 0.3) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            conv_block(in_channels, 32),  # (N, 32, H/2, W/2)
            conv_block(32, 64),  # (N, 64, H/4, W/4)
            conv_block(64, 128),  # (N, 128, H/8, W/8)
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),  # (N, 128)
        )
        self.feature_dim = 128
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.feature_dim, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def reset_head(self, num_classes: int) -> None:
        self.head[-1] = nn.Linear(self.feature_dim, num_classes)


MODELS = {"small_cnn": SmallCNN}


def build_model(name: str, num_classes: int, in_channels: int) -> nn.Module:
    return MODELS[name](num_classes=num_classes, in_channels=in_channels)
