"""evaluate for `modality: text`: test-set predictions of the fine-tuned model
(the candidate finetune chose on validation), its baseline and every other
candidate; `transferline.evaluation.write_evaluation` writes what both
modalities write (metrics.json, per_class.json, confusion matrix, learning
curves). `test_predictions` is also how an experiment trial scores a model."""

from __future__ import annotations

import logging

import numpy as np
import torch

from transferline.candidates import folder_name, metric_key, read_candidates
from transferline.config import Params
from transferline.evaluation import RUNS, once_per_file, write_evaluation
from transferline.paths import Paths
from transferline.runtime import resolve_device, set_threads
from transferline.text import data as td
from transferline.text.models import load_classifier, predict_logits

log = logging.getLogger(__name__)


def test_predictions(model: torch.nn.Module, params: Params, paths: Paths, meta: dict) -> tuple[np.ndarray, np.ndarray]:
    """(true, predicted) class indices on ${paths.processed}'s test split."""
    data = td.load_set(paths, "target")
    logits = predict_logits(model, data["ids_test"], meta["special_ids"]["[PAD]"], params.text.evaluate.batch_size,
                            resolve_device(params.device))
    return data["y_test"].numpy(), logits.argmax(1).numpy()


def run(params: Params, paths: Paths) -> dict:
    """Score both models on the test split; the metrics (as written to metrics.json)."""
    meta = td.processed_meta(paths)
    set_threads(params.text.finetune.threads)
    score = once_per_file(lambda path: test_predictions(load_classifier(path), params, paths, meta))
    predictions = {}
    for name in RUNS:
        y_true, predictions[name] = score(paths.weights(name))
    candidates = {}
    for row in read_candidates(paths.report("candidates"))["candidates"]:
        if not row.get("skipped"):
            candidates[metric_key(row["candidate"])] = score(paths.weights(folder_name(row["candidate"])))[1]
    return write_evaluation(y_true, predictions, meta["classes"], paths, candidates)
