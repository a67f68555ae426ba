"""register (images): log the fine-tuned model as a pyfunc that takes raw
images (transferline/image/serving.py, weights and preprocessing stats as
artifacts) and register it as a new challenger version (transferline.registry)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from transferline.config import Params
from transferline.dvcexp import skip_in_experiment
from transferline.errors import StageError
from transferline.image.data import processed_meta
from transferline.image.serving import ImageClassifier
from transferline.io import write_json
from transferline.paths import Paths
from transferline.registry import PACKAGE, register_model, require

SERVING = PACKAGE / "image" / "serving.py"
PREPROCESS_KEYS = ("mean", "std", "classes", "image_size", "channels")


def input_example(prep: dict, seed: int) -> np.ndarray:
    """Two raw uint8 images in the layout the signature will promise."""
    size, channels = int(prep["image_size"]), int(prep["channels"])
    shape = (2, size, size) if channels == 1 else (2, channels, size, size)
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def run(params: Params, paths: Paths) -> dict:
    """Log and register the fine-tuned model; return (and write) the summary."""
    if (skipped := skip_in_experiment("register", paths.reports)) is not None:
        return skipped  # an experiment never registers (transferline/dvcexp.py)
    model = paths.weights("finetune")
    require({model: "finetune", paths.processed_meta: "preprocess", paths.report("metrics"): "evaluate"})
    prep = processed_meta(paths)
    missing = [k for k in PREPROCESS_KEYS if not isinstance(prep, dict) or k not in prep]
    if missing:
        raise StageError(f"{paths.processed_meta}: target is missing {', '.join(missing)}; re-run the preprocess stage")
    with tempfile.TemporaryDirectory() as tmp:
        prep_path = write_json(Path(tmp) / "preprocess.json", prep)
        example = input_example(prep, params.seed)
        labels = ImageClassifier().load(str(model), str(prep_path)).predict(None, example)
        return register_model(params, paths, SERVING, {"weights": model, "preprocess": prep_path}, example, labels,
                              classes=list(prep["classes"]))
