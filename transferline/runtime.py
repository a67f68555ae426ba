"""Seeds, devices and the environment defaults every entry point shares."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

# Telemetry off, hubs offline, project-local Prefect state. Set before the
# libraries are imported; a user's own environment wins.
ENV_DEFAULTS = {
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_HOME": ".transferline/prefect",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "GIT_PYTHON_REFRESH": "quiet",
}


def apply_env_defaults() -> None:
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    # Prefect creates its home without parents and then fails to open its DB.
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)


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
