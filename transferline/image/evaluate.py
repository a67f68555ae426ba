"""evaluate (images): the fine-tuned model (the candidate finetune chose on
validation), the scratch baseline and every other candidate on the held-out
test set; transferline.evaluation writes the metrics (DVC metrics
file), per-class scores, the transfer gain, the confusion matrix and the
learning curves, as for text."""

from __future__ import annotations

import numpy as np

from transferline.candidates import folder_name, metric_key, read_candidates
from transferline.config import Params
from transferline.evaluation import RUNS, once_per_file, write_evaluation
from transferline.image.data import load_set, processed_meta
from transferline.image.models import load_classifier, predict
from transferline.paths import Paths
from transferline.runtime import resolve_device


def predict_classes(model, x, batch_size: int, device) -> np.ndarray:
    """Predicted class indices of `model` for cached (normalised) images `x`."""
    return predict(model.to(device), x, batch_size, device).argmax(1).numpy()


def run(params: Params, paths: Paths) -> dict:
    data = load_set(paths, "target")
    classes = processed_meta(paths)["classes"]
    device = resolve_device(params.device)
    batch = params.image.evaluate.batch_size
    score = once_per_file(lambda path: predict_classes(load_classifier(path), data["x_test"], batch, device))
    predictions = {name: score(paths.weights(name)) for name in RUNS}
    trained = [r["candidate"] for r in read_candidates(paths.report("candidates"))["candidates"] if not r.get("skipped")]
    candidates = {metric_key(c): score(paths.weights(folder_name(c))) for c in trained}
    return write_evaluation(data["y_test"].numpy(), predictions, classes, paths, candidates)
