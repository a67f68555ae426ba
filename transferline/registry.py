"""Register a trained model as a new challenger version, for either modality.

The logged model is a pyfunc "model from code" (the modality's serving.py)
with its weights and preprocessing as artifacts, so the registry holds
everything needed to classify raw inputs. The version is tagged with its
test metrics and its lineage (git commit, DVC hashes, params, MLflow and
Prefect run ids). Whether it becomes `champion` is the promote stage's call.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import transferline
from transferline.champion import CLASSES_TAG
from transferline.config import Params
from transferline.errors import StageError
from transferline.io import read_json, write_json
from transferline.lineage import RUN_ID_ENV
from transferline.paths import Paths

log = logging.getLogger(__name__)

CHAMPION = "champion"
PACKAGE = Path(transferline.__file__).resolve().parent
# What every served model imports. Pinned explicitly: inferring them means
# loading the model in a subprocess and takes longer than the whole stage.
SERVING_PACKAGES = ("mlflow", "torch", "numpy", "safetensors")
# metrics.json section -> metric name prefix; the fine-tuned model is the one registered.
METRIC_PREFIX = {"finetune": "test"}


def pip_requirements(packages: tuple[str, ...] = SERVING_PACKAGES) -> list[str]:
    reqs = []
    for name in packages:
        try:
            # A local build tag (torch 2.x+cu132) is not on PyPI: pin the release.
            reqs.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            reqs.append(name)
    return reqs


def flatten_metrics(metrics: dict) -> dict[str, float]:
    """{"finetune": {"accuracy": .9}, "transfer_gain": {...}} -> {"test_accuracy": .9, "transfer_gain_...": ...}"""
    flat = {}
    for section, values in metrics.items():
        if not isinstance(values, dict):
            continue
        prefix = METRIC_PREFIX.get(section, section)
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                flat[f"{prefix}_{key}"] = float(value)
    return flat


def require(files: dict[Path, str]) -> None:
    """Each file must exist; else name the stage that writes it."""
    for path, stage in files.items():
        if not path.is_file():
            raise StageError(f"{path} not found; run the {stage} stage first (dvc repro {stage})")


@contextmanager
def _run() -> Iterator[str]:
    """The run to log into: the flow's (RUN_ID_ENV) or a new "register" run."""
    import mlflow
    from mlflow.exceptions import MlflowException

    run_id = os.environ.get(RUN_ID_ENV)
    active = mlflow.active_run()
    if run_id and active is not None and active.info.run_id == run_id:
        yield run_id  # called in-process by the run's owner; it ends the run
        return
    if run_id:
        client = mlflow.MlflowClient()
        try:
            status = client.get_run(run_id).info.status
        except MlflowException:
            raise StageError(f"{RUN_ID_ENV}={run_id} is not a run in {mlflow.get_tracking_uri()}; unset it") from None
        with mlflow.start_run(run_id=run_id):
            yield run_id
        if status == "RUNNING":
            # Leaving the block marked the run FINISHED; its owner ends it, not us.
            client.update_run(run_id, status="RUNNING")
        return
    with mlflow.start_run(run_name="register", nested=active is not None) as run:
        yield run.info.run_id


def register_model(params: Params, paths: Paths, serving: Path, artifacts: dict[str, Path], example: Any,
                   predicted: Any, packages: tuple[str, ...] = SERVING_PACKAGES,
                   classes: list[str] | None = None) -> dict:
    """Log `serving` with `artifacts` as a new version of params.model_name; tag it; write register.json.

    `example` is a raw input and `predicted` what the model answers for it
    (the signature is inferred from the two). `classes` (the label set) goes on
    the version: the gate never compares models of different label sets."""
    import mlflow
    from mlflow.models import infer_signature

    from transferline import card, lineage, tracking

    metrics = read_json(paths.report("metrics"))
    flat = flatten_metrics(metrics)
    name = params.model_name
    provenance = {**tracking.git_info(), **tracking.dvc_hashes(), "modality": params.modality}
    tracking.configure(params.tracking)
    client = mlflow.MlflowClient()
    with _run() as run_id:
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(serving),
            artifacts={k: str(v) for k, v in artifacts.items()},
            code_paths=[str(PACKAGE)],
            signature=infer_signature(example, predicted),
            input_example=example,
            pip_requirements=pip_requirements(packages),
        )
        mlflow.log_metrics(flat)
        mlflow.set_tags(provenance)
        lineage.log_files(client, run_id)
        version_tags = {**{k: f"{v:.6g}" for k, v in flat.items()}, **lineage.collect(client, run_id),
                        "modality": params.modality, **({CLASSES_TAG: json.dumps(list(classes))} if classes else {})}
        # The version and its tags in one registry write: a run killed here leaves either no
        # version or a whole one, never one without the label set and metrics the gate reads.
        model_version = str(mlflow.register_model(info.model_uri, name, tags=version_tags).version)
    card.write(client, params, paths, name, model_version, run_id, provenance)
    champion = client.get_registered_model(name).aliases.get(CHAMPION)
    summary = {
        "name": name,
        "version": model_version,
        "run_id": run_id,
        "champion_version": None if champion is None else str(champion),
        "became_champion": False,  # kept for readers of this file; the promote stage decides
    }
    write_json(paths.report("register"), summary)
    log.info("registered %s version %s (run %s); champion is version %s until the promote stage decides",
             name, model_version, run_id, champion)
    return summary
