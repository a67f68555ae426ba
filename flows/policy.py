"""Retries, backoff and timeouts for the tasks that touch the network or a
shared store, from params.yaml `orchestrate`.

ingest fetches the pinned artifacts (network); register and promote write to
the MLflow registry; push writes to the DVC remote. A failure there may be
transient, so those tasks retry with exponential backoff; every other stage
is deterministic and fails at once. So does a fetch or registry stage that
refused its input (`[stage] error: ...`, a StageRefused): a missing column
fails the same way on every try, so it is printed once, not three times.
"""

from __future__ import annotations

from typing import Any

from prefect.tasks import exponential_backoff

from transferline.config import OrchestrateParams
from transferline.dvcrun import StageRefused

FETCH_STAGES = ("ingest",)
REGISTRY_STAGES = ("register", "promote")


def can_pass(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's retry_condition_fn: retry a network or registry fault, never a refused input."""
    exc = state.data if isinstance(state.data, BaseException) else None
    return not isinstance(exc, StageRefused)


def _retrying(cfg: OrchestrateParams, timeout: float) -> dict[str, Any]:
    return {
        "retries": cfg.retries,
        "retry_condition_fn": can_pass,
        # first retry after retry_delay_seconds, then twice as long each time
        "retry_delay_seconds": exponential_backoff(cfg.retry_delay_seconds)(cfg.retries) if cfg.retries else 0,
        "timeout_seconds": timeout,
    }


def stage_options(stage: str, cfg: OrchestrateParams) -> dict[str, Any]:
    """Prefect task options for one pipeline stage."""
    if stage in FETCH_STAGES:
        return _retrying(cfg, cfg.fetch_timeout_seconds)
    if stage in REGISTRY_STAGES:
        return _retrying(cfg, cfg.registry_timeout_seconds)
    return {}


def push_options(cfg: OrchestrateParams) -> dict[str, Any]:
    return _retrying(cfg, cfg.push_timeout_seconds)
