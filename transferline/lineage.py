"""Lineage: what a model version came from, and putting that data back.

Every registered version carries, as version tags:
  git.commit, git.dirty            the code (dirty = uncommitted changes when it ran)
  dvc.<out path>                   DVC hash of every data set and checkpoint (dvc.lock)
  params.<key>                     every value of params.yaml, flattened
  lineage.mlflow_run_id            the register run (its parent is the pipeline run)
  lineage.mlflow_parent_run_id
  lineage.prefect_flow_run_id      the flow run (env TRANSFERLINE_PREFECT_FLOW_RUN_ID)
  lineage.params_sha256, lineage.dvc_lock_sha256
and its run holds the exact params.yaml and dvc.lock under `lineage/`.

`restore` brings the workspace's data and checkpoints back to a version's
hashes: it puts the recorded dvc.lock in place (the current one is saved
first) and runs `dvc fetch` + `dvc checkout` on the data/ and models/ outs.
It refuses when one of those outs holds changes DVC has not recorded (they
would be lost) unless forced. The code is not touched: `git checkout
<git.commit>` does that, and is left to the user.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from transferline.errors import mlflow_error_code
from transferline.runlog import flatten

# Set by the flow for each stage it runs (flows/pipeline.py), read by register here and in transferline.registry.
RUN_ID_ENV = "TRANSFERLINE_MLFLOW_RUN_ID"  # tells a stage which MLflow run is its own
FLOW_RUN_ENV = "TRANSFERLINE_PREFECT_FLOW_RUN_ID"  # the Prefect flow run a stage belongs to
ARTIFACTS = "lineage"
RESTORED_PREFIXES = ("data/", "models/")  # which dvc.lock outs are "data and checkpoints"
BACKUPS = Path(".transferline/lineage")


class LineageError(RuntimeError):
    """Lineage cannot be read or restored; the message says why and what to do."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"


def collect(client: Any, run_id: str, params_path: Path = Path("params.yaml"),
            lock_path: Path = Path("dvc.lock")) -> dict[str, str]:
    """The lineage tags for a version logged in run `run_id` (see the module docstring)."""
    from transferline import tracking

    tags = {**tracking.git_info(), **tracking.dvc_hashes(lock_path)}
    parent = client.get_run(run_id).data.tags.get("mlflow.parentRunId", "")
    tags.update({
        "lineage.mlflow_run_id": run_id,
        "lineage.mlflow_parent_run_id": parent or "none",
        "lineage.prefect_flow_run_id": os.environ.get(FLOW_RUN_ENV) or "none (not run by the flow)",
        "lineage.params_sha256": _sha256(params_path),
        "lineage.dvc_lock_sha256": _sha256(lock_path),
    })
    if params_path.is_file():
        raw = yaml.load(params_path.read_text(), Loader=yaml.CSafeLoader) or {}  # noqa: S506 (libyaml's safe loader)
        tags.update({f"params.{k}": json.dumps(v) if isinstance(v, list) else str(v)
                     for k, v in flatten(raw).items()})
    return tags


def log_files(client: Any, run_id: str, params_path: Path = Path("params.yaml"),
              lock_path: Path = Path("dvc.lock")) -> None:
    """Keep the exact params.yaml and dvc.lock with the run."""
    for path in (params_path, lock_path):
        if path.is_file():
            client.log_artifact(run_id, str(path), ARTIFACTS)


def resolve(client: Any, ref: str) -> Any:
    """NAME@ALIAS, NAME/VERSION or NAME (= NAME@champion) -> the ModelVersion."""
    name = ref.split("@", 1)[0].partition("/")[0]
    try:
        if "@" in ref:
            return client.get_model_version_by_alias(name, ref.split("@", 1)[1])
        version = ref.partition("/")[2]
        if version:
            return client.get_model_version(name, version)
        return client.get_model_version_by_alias(name, "champion")
    except Exception as err:
        if mlflow_error_code(err) is None:
            raise
        if not client.search_registered_models(filter_string=f"name = '{name}'"):
            raise LineageError(f"{ref}: no model {name!r} is registered yet; `transferline run` trains and "
                               "registers one") from None
        raise LineageError(f"{ref}: not found in the registry ({err.message.splitlines()[0]}); "
                           "use NAME@ALIAS or NAME/VERSION") from None


def describe(client: Any, ref: str) -> dict:
    """The lineage of a version, grouped: code, data, params, runs, gate."""
    mv = resolve(client, ref)
    tags = dict(mv.tags or {})
    pick = lambda prefix: {k.removeprefix(prefix): v for k, v in sorted(tags.items()) if k.startswith(prefix)}  # noqa: E731
    return {
        "model": mv.name,
        "version": str(mv.version),
        "aliases": list(mv.aliases or []),
        "created": mv.creation_timestamp,
        "source": mv.source,
        "code": pick("git."),
        "data": pick("dvc."),
        "params": pick("params."),
        "runs": {"mlflow_run_id": mv.run_id, **pick("lineage.")},
        "promotion": pick("promote."),
    }


def recorded_lock(client: Any, mv: Any) -> str:
    """The dvc.lock text the version was registered with (run artifact; else git)."""
    import mlflow

    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=f"{ARTIFACTS}/dvc.lock",
                                                       dst_path=tmp)
            return Path(path).read_text()
    except Exception:
        commit = (mv.tags or {}).get("git.commit", "unknown")
        done = subprocess.run(["git", "show", f"{commit}:dvc.lock"], capture_output=True, text=True)
        if commit != "unknown" and done.returncode == 0:
            return done.stdout
    raise LineageError(f"{mv.name} version {mv.version}: no recorded dvc.lock (run artifact {ARTIFACTS}/dvc.lock "
                       "missing and git.commit unavailable); its data cannot be restored")


def lock_outs(lock_text: str) -> dict[str, str]:
    """{out path: md5} for the data and checkpoint outs in a dvc.lock text."""
    lock = yaml.safe_load(lock_text) or {}
    outs = {}
    for stage in (lock.get("stages") or {}).values():
        for out in (stage or {}).get("outs") or []:
            if out.get("path", "").startswith(RESTORED_PREFIXES) and out.get("md5"):
                outs[out["path"]] = out["md5"]
    return outs


def _dvc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise LineageError(f"dvc {' '.join(args)} failed: {(done.stderr or done.stdout).strip()[-1500:]}")
    return done


def changed_outs(paths: list[str]) -> dict[str, str]:
    """{path: DVC's word for it} for those of `paths` that differ from the current dvc.lock."""
    if not Path("dvc.lock").is_file():
        return {}
    status = json.loads(_dvc("status", "--json").stdout or "{}")
    changed: dict[str, str] = {}
    for entries in status.values():
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict):
                for path, state in (entry.get("changed outs") or {}).items():
                    if any(path == p or path.startswith(p.rstrip("/") + "/") for p in paths):
                        changed[path] = state
    return changed


def restore(client: Any, ref: str, force: bool = False) -> dict:
    """Check out the data and checkpoints `ref` was trained and tested on (see the module docstring)."""
    if not Path("dvc.yaml").is_file():
        raise LineageError("no dvc.yaml here; run from the project root")
    mv = resolve(client, ref)
    text = recorded_lock(client, mv)
    outs = lock_outs(text)
    if not outs:
        raise LineageError(f"{mv.name} version {mv.version}: its dvc.lock lists no data/ or models/ outs")
    modified = {p: s for p, s in changed_outs(list(outs)).items() if s == "modified"}
    if modified and not force:
        raise LineageError("these outs hold changes DVC has not recorded and would be overwritten: "
                           + ", ".join(f"{p} ({s})" for p, s in sorted(modified.items()))
                           + "; record them (`dvc commit` or `transferline run`) or pass --force")
    BACKUPS.mkdir(parents=True, exist_ok=True)
    backup = None
    if Path("dvc.lock").is_file():
        backup = BACKUPS / f"dvc.lock.{time.strftime('%Y%m%dT%H%M%S')}.before-v{mv.version}"
        shutil.copy("dvc.lock", backup)
    Path("dvc.lock").write_text(text)
    targets = sorted(outs)
    _dvc("fetch", *targets, check=False)  # from the remote what the local cache lacks
    _dvc("checkout", "--force", *targets)
    left = changed_outs(targets)
    if left:
        raise LineageError(f"after checkout these outs still differ from version {mv.version}'s hashes: {left}")
    return {"model": mv.name, "version": str(mv.version), "restored": outs, "dvc_lock_backup": str(backup),
            "git_commit": (mv.tags or {}).get("git.commit", "unknown")}
