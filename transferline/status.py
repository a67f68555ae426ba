"""What is serving and what ran last: the champion version and the latest run."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from transferline.config import Params
from transferline.errors import mlflow_error_code
from transferline.storeview import read_registry

CHAMPION = "champion"
PARENT_TAG = "mlflow.parentRunId"
# Version tags that are provenance or gate records, not metrics (tasks/register.py, transferline/promotion.py, champion.py).
PROVENANCE_PREFIXES = ("git.", "dvc.", "mlflow.", "lineage.", "params.", "promote.", "champion.")


def _iso(millis: int | None) -> str | None:
    if millis is None:
        return None
    return datetime.fromtimestamp(millis / 1000, tz=timezone.utc).isoformat(timespec="seconds")


def _metrics_from_tags(tags: dict[str, str]) -> dict[str, float]:
    metrics = {}
    for key, value in tags.items():
        if key.startswith(PROVENANCE_PREFIXES):
            continue
        try:
            metrics[key] = float(value)
        except ValueError:
            continue
    return metrics


def _champion(client: Any, name: str) -> dict | None:
    try:
        version = client.get_registered_model(name).aliases.get(CHAMPION)
    except Exception as err:
        if mlflow_error_code(err) == "RESOURCE_DOES_NOT_EXIST":
            return None  # nothing registered yet
        raise
    if version is None:
        return None
    mv = client.get_model_version(name, str(version))
    metrics = _metrics_from_tags(mv.tags or {})
    if not metrics and mv.run_id:
        # A version registered by hand has no metric tags; its run may have metrics.
        try:
            metrics = dict(client.get_run(mv.run_id).data.metrics)
        except Exception as err:
            if mlflow_error_code(err) is None:
                raise
            metrics = {}
    return {
        "name": name,
        "version": str(mv.version),
        "metrics": metrics,
        "run_id": mv.run_id,
        "created": _iso(mv.creation_timestamp),
    }


def _last_run(client: Any, experiment_id: str) -> dict | None:
    """Most recent top-level run; child runs (stages inside a flow) are skipped."""
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], order_by=["attributes.start_time DESC"], max_results=100, page_token=token
        )
        for run in page:
            if PARENT_TAG not in run.data.tags:
                info = run.info
                return {
                    "run_id": info.run_id,
                    "name": info.run_name,
                    "status": info.status,
                    "start_time": _iso(info.start_time),
                    "end_time": _iso(info.end_time),
                }
        token = page.token
        if not token:
            return None


def registry_gap(cfg: Params, client: Any | None = None) -> str | None:
    """Why the registry disagrees with what DVC recorded, or None.

    reports/register.json (a DVC output, so it matches dvc.lock) names the
    version the current weights were registered as, and the run that did it.
    A lost or replaced tracking database lacks that version or holds another
    run under its number; DVC cannot see that (the registry is outside it),
    so the pipeline asks here and re-registers (flows/pipeline.py)."""
    import json

    record = cfg.paths.report("register")
    if not record.is_file():
        return None  # nothing registered yet: the register stage will run anyway
    info = json.loads(record.read_text())
    if client is None:
        import mlflow

        from transferline import tracking

        tracking.configure(cfg.tracking)
        client = mlflow.MlflowClient()
    try:
        mv = client.get_model_version(info["name"], str(info["version"]))
    except Exception as err:
        if mlflow_error_code(err) is None:
            raise
        return (f"{record} says {info['name']} version {info['version']}, which the registry "
                f"({cfg.tracking.uri}) lacks; the next `transferline run` registers it again from the DVC-tracked weights")
    if info.get("run_id") and mv.run_id != info["run_id"]:
        return (f"{info['name']} version {info['version']} in the registry comes from run {mv.run_id}, not {info['run_id']} "
                f"as {record} says (another database?); the next `transferline run` registers the current weights again")
    return None


def status(cfg: Params) -> dict:
    """{"champion", "last_run", "registry_gap"} from the tracking store (the gap: None when it agrees with DVC).
    A local SQLite store is read without MLflow when it can be (transferline.storeview)."""
    def read(client: Any) -> dict:
        experiment_id = client.get_experiment_by_name(cfg.tracking.experiment).experiment_id
        return {
            "champion": _champion(client, cfg.model_name),
            "last_run": _last_run(client, experiment_id),
            "registry_gap": registry_gap(cfg, client),
        }

    return read_registry(cfg.tracking, read)


def kept_status(cfg: Params) -> dict:
    """`status(cfg)`, kept in .transferline/readcache until the tracking store changes."""
    from transferline.env import apply_env_defaults
    from transferline.readcache import cached

    def read() -> dict:
        apply_env_defaults()
        return status(cfg)

    # register.json: the registry gap compares the store with what DVC recorded.
    return cached(cfg.tracking, f"status {cfg.model_name} {cfg.tracking.experiment}", read,
                  files=[cfg.paths.report("register")])
