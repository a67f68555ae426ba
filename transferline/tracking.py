"""MLflow helpers: where runs go, and what ties a run to its code and data.

The default store is a local SQLite file next to the project, so runs, the
model registry and aliases work without a server. Setting
MLFLOW_TRACKING_URI points everything at a server instead.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import yaml
from mlflow.exceptions import MlflowException

from transferline.config import TrackingParams
from transferline.preflight import sqlite_file

log = logging.getLogger(__name__)

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"

# MLflow rejects tag keys outside this set; DVC out paths can hold anything.
_TAG_KEY_UNSAFE = re.compile(r"[^\w.\- /]")


def _is_local(uri: str) -> bool:
    return urlparse(uri).scheme in ("sqlite", "file", "")


# mlflow.set_tracking_uri() also writes MLFLOW_TRACKING_URI (for subprocesses),
# so after our first call the variable may be our own echo of cfg.uri, not
# the user's choice. Remember what we set to tell the two apart.
_last_set: tuple[str, bool] | None = None  # (uri, came from cfg)


def _choose_uri(cfg: TrackingParams) -> tuple[str, bool]:
    """(MLFLOW_TRACKING_URI when the user set it, else cfg.uri; whether it is cfg.uri)."""
    env = os.environ.get(TRACKING_URI_ENV)
    if not env or _last_set == (env, True):
        return cfg.uri, True
    return env, False


def anchored(cfg: TrackingParams) -> TrackingParams:
    """`cfg` with a relative SQLite file and artifact folder resolved against the project root
    (DVC_ROOT inside a stage: a `dvc exp run --temp` copy must not get a registry of its own)."""
    from transferline.dvcexp import project_root

    root = project_root()
    db = sqlite_file(cfg.uri)
    uri = f"sqlite:///{root / db}" if db is not None and not db.is_absolute() else cfg.uri
    artifacts = cfg.artifact_root if Path(cfg.artifact_root).is_absolute() else str(root / cfg.artifact_root)
    return cfg.model_copy(update={"uri": uri, "artifact_root": artifacts})


def configure(cfg: TrackingParams) -> str:
    """Point MLflow at the store, make the experiment active; return its id.

    MLFLOW_TRACKING_URI wins over params.yaml so a flow or CI can redirect
    every stage at once without editing params. Relative paths in params.yaml
    are relative to the project root (`anchored`).
    """
    global _last_set
    cfg = anchored(cfg)
    uri, from_cfg = _choose_uri(cfg)
    _last_set = (uri, from_cfg)
    db = sqlite_file(uri)
    if db is not None:
        # SQLite creates the file but not its folder.
        db.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(cfg.experiment)
    if experiment is None:
        # A server chooses its own artifact store; a local DB gets a folder in
        # the project, not ./mlruns wherever the command happened to run.
        location = Path(cfg.artifact_root).resolve().as_uri() if _is_local(uri) else None
        try:
            experiment_id = client.create_experiment(cfg.experiment, artifact_location=location)
        except MlflowException:
            # Another stage created it between our lookup and create.
            experiment = client.get_experiment_by_name(cfg.experiment)
            if experiment is None:
                raise
            experiment_id = experiment.experiment_id
        else:
            log.info("created MLflow experiment %r (id %s) in %s", cfg.experiment, experiment_id, uri)
    else:
        experiment_id = experiment.experiment_id
        if experiment.lifecycle_stage == "deleted":
            # set_experiment refuses a deleted one, and its name stays taken.
            log.warning("MLflow experiment %r was deleted; restoring it", cfg.experiment)
            client.restore_experiment(experiment_id)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_info() -> dict[str, str]:
    """HEAD commit and whether the tree has uncommitted changes.

    Outside a git repository (or without git) both are "unknown" rather than
    an error: an unpinned run is still worth recording.
    """
    commit = _git("rev-parse", "HEAD")
    # Untracked files count: a new, uncommitted module changes what ran.
    status = _git("status", "--porcelain")
    return {
        "git.commit": commit or "unknown",
        "git.dirty": "unknown" if status is None else str(bool(status)).lower(),
    }


def dvc_hashes(lock_path: str | Path = "dvc.lock") -> dict[str, str]:
    """`dvc.<out path>: <md5>` for every stage output recorded in dvc.lock.

    These pin the exact data and model a registered version came from; a
    missing or unreadable lock gives {} (a run outside `dvc repro`).
    """
    path = Path(lock_path)
    if not path.is_file():
        return {}
    try:
        lock = yaml.load(path.read_text(), Loader=yaml.CSafeLoader) or {}  # libyaml: ~1,000 lines
    except (OSError, yaml.YAMLError) as err:
        log.warning("cannot read %s (%s); registering without data hashes", path, err)
        return {}
    tags: dict[str, str] = {}
    stages = lock.get("stages") if isinstance(lock, dict) else None
    for stage in (stages or {}).values():
        for out in (stage or {}).get("outs") or []:
            if isinstance(out, dict) and out.get("path") and out.get("md5"):
                key = _TAG_KEY_UNSAFE.sub("_", f"dvc.{out['path']}")
                tags[key] = str(out["md5"])
    return tags
