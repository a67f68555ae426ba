"""register: log the fine-tuned model to MLflow and register a new version.

The logged model is transferline/serving.py (a pyfunc "model from code")
with the weights and the preprocessing stats as artifacts, so the registry
holds everything needed to classify raw images. The version is tagged with
its test metrics and its lineage (transferline/lineage.py: git commit, DVC
hashes, params, MLflow and Prefect run ids). Whether it becomes `champion`
is the promote stage's decision. Output: reports/register.json.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

import transferline
from tasks._stage import StageError, run_main
from transferline.config import Params
from transferline.dvcrun import RUN_ID_ENV
from transferline.io import read_json, write_json

log = logging.getLogger(__name__)

MODEL = Path("models/finetune/model.safetensors")
PROCESSED_META = Path("data/processed/meta.json")
METRICS = Path("reports/metrics.json")
OUT = Path("reports/register.json")
PACKAGE = Path(transferline.__file__).resolve().parent
SERVING = PACKAGE / "serving.py"

CHAMPION = "champion"
PREPROCESS_KEYS = ("mean", "std", "classes", "image_size", "channels")
# What the served model imports. Pinned explicitly: inferring them means
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


def read_inputs() -> tuple[dict, dict]:
    """The preprocess dict (meta["target"]) and metrics.json, checked."""
    for path, stage in ((MODEL, "finetune"), (PROCESSED_META, "preprocess"), (METRICS, "evaluate")):
        if not path.is_file():
            raise StageError(f"{path} not found; run the {stage} stage first (dvc repro {stage})")
    prep = read_json(PROCESSED_META).get("target")
    missing = [k for k in PREPROCESS_KEYS if not isinstance(prep, dict) or k not in prep]
    if missing:
        raise StageError(f"{PROCESSED_META}: target is missing {', '.join(missing)}; re-run the preprocess stage")
    return prep, read_json(METRICS)


def input_example(prep: dict, seed: int) -> np.ndarray:
    """Two raw uint8 images in the layout the signature will promise."""
    size, channels = int(prep["image_size"]), int(prep["channels"])
    shape = (2, size, size) if channels == 1 else (2, channels, size, size)
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


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


def register(params: Params, out_path: Path = OUT) -> dict:
    """Log and register the fine-tuned model; return (and write) the summary."""
    import mlflow
    from mlflow.models import infer_signature

    from transferline import lineage, tracking
    from transferline.serving import ImageClassifier

    prep, metrics = read_inputs()
    flat = flatten_metrics(metrics)
    name = params.model_name
    provenance = {**tracking.git_info(), **tracking.dvc_hashes()}

    tracking.configure(params.tracking)
    client = mlflow.MlflowClient()
    with tempfile.TemporaryDirectory() as tmp, _run() as run_id:
        prep_path = write_json(Path(tmp) / "preprocess.json", prep)
        example = input_example(prep, params.seed)
        labels = ImageClassifier().load(str(MODEL), str(prep_path)).predict(None, example)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(SERVING),
            artifacts={"weights": str(MODEL), "preprocess": str(prep_path)},
            code_paths=[str(PACKAGE)],
            signature=infer_signature(example, labels),
            input_example=example,
            pip_requirements=pip_requirements(),
            registered_model_name=name,
        )
        mlflow.log_metrics(flat)
        mlflow.set_tags(provenance)
        lineage.log_files(client, run_id)
        version_tags = {**{k: f"{v:.6g}" for k, v in flat.items()}, **lineage.collect(client, run_id)}
    model_version = str(info.registered_model_version)
    for key, value in version_tags.items():
        client.set_model_version_tag(name, model_version, key, value)

    champion = client.get_registered_model(name).aliases.get(CHAMPION)
    summary = {
        "name": name,
        "version": model_version,
        "run_id": run_id,
        "champion_version": None if champion is None else str(champion),
        "became_champion": False,  # kept for readers of this file; the promote stage decides
    }
    write_json(out_path, summary)
    log.info("registered %s version %s (run %s); champion is version %s until the promote stage decides",
             name, model_version, run_id, champion)
    return summary


def main(params: Params) -> None:
    if params.modality == "text":
        from transferline.text import register as text_register

        text_register.register(params)
        return
    register(params)


if __name__ == "__main__":
    run_main("register", main)
