"""Seeds and devices (the torch side of the runtime; environment defaults: transferline.env)."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for in params.yaml but no GPU is visible; set device: auto or cpu")
    return torch.device(name)


def set_threads(n: int) -> None:
    """On a shared CPU one thread can be several times faster than two fighting for cores."""
    if n:
        torch.set_num_threads(n)
