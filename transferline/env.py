"""The environment defaults every entry point shares (no torch, no Prefect, no MLflow)."""

from __future__ import annotations

import os
from pathlib import Path

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
    # MLflow retries a refused connection 7 times with doubling waits (about two minutes) before
    # a stage can say the tracking server is gone; the orchestrator retries the registry
    # stages (orchestrate.retries), so a few seconds here are enough.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}


def apply_env_defaults() -> None:
    """Set every ENV_DEFAULTS key the environment does not set already."""
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    # Prefect creates its home without parents and then fails to open its DB.
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
