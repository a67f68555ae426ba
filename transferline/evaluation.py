"""What the evaluate stage writes, for either modality: given test labels and
each model's predictions, the metrics (DVC metrics file), per-class scores,
the confusion matrix and the learning curves."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from transferline import metrics as m
from transferline.io import read_json, write_json
from transferline.paths import Paths

log = logging.getLogger(__name__)

RUNS = ("finetune", "scratch")  # the fine-tuned model and its from-scratch baseline
T = TypeVar("T")


def once_per_file(predict: Callable[[Path], T]) -> Callable[[Path], T]:
    """`predict(weights file)`, run once per distinct file content.

    models/finetune is a byte copy of the winning candidate and scratch is both
    the baseline and a candidate, so two candidates are two models to score,
    not four. A weights file is the whole model (its architecture is in the
    file's metadata), so equal bytes give equal predictions."""
    done: dict[str, T] = {}

    def cached(path: Path) -> T:
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if digest not in done:
            done[digest] = predict(path)
        return done[digest]

    return cached


def save_confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str], path, title: str) -> None:
    """Counts per (true, predicted) class, annotated, as scikit-learn's ConfusionMatrixDisplay draws them."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    counts, _ = m.confusion(y_true, y_pred, range(len(classes)))
    n = len(classes)
    fig, ax = plt.subplots(figsize=(max(6.4, 0.6 * n + 2),) * 2)
    ax.imshow(counts, cmap="viridis")
    bright = counts.max() / 2  # viridis is bright at the top: dark text there, light text below
    for (i, j), count in np.ndenumerate(counts):
        ax.text(j, i, str(count), ha="center", va="center", color="black" if count > bright else "white")
    ax.set(xticks=range(n), yticks=range(n), xticklabels=list(classes), yticklabels=list(classes),
           xlabel="Predicted label", ylabel="True label", title=title)
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_learning_curves(histories: dict[str, list[dict]], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for name, rows in histories.items():
        epochs = [r["epoch"] for r in rows]
        ax_loss.plot(epochs, [r["train_loss"] for r in rows], label=f"{name} train")
        ax_loss.plot(epochs, [r["val_loss"] for r in rows], "--", label=f"{name} val")
        ax_acc.plot(epochs, [r["val_acc"] for r in rows], label=f"{name} val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="validation accuracy")
    for ax in (ax_loss, ax_acc):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_evaluation(y_true: np.ndarray, predictions: dict[str, np.ndarray], classes: Sequence[str],
                     paths: Paths, candidates: dict[str, np.ndarray] | None = None) -> dict:
    """metrics.json ({finetune, scratch, transfer_gain, transfer_gain_ci95, n_test, candidates}), per_class.json
    and the plots. `candidates`: every fine-tuned candidate's test predictions, reported beside
    the winner (chosen on validation by finetune; the test split never chooses)."""
    scores = {name: m.classification_scores(y_true, predictions[name]) for name in RUNS}
    per_class = {name: m.per_class_scores(y_true, predictions[name], classes) for name in RUNS}
    result = {**scores, "transfer_gain": m.transfer_gain(scores["finetune"], scores["scratch"]),
              "transfer_gain_ci95": m.paired_gain_interval(y_true, predictions["finetune"], predictions["scratch"]),
              "n_test": int(len(y_true))}
    if candidates is not None:
        result["candidates"] = {name: m.classification_scores(y_true, pred) for name, pred in candidates.items()}
    save_confusion_matrix(y_true, predictions["finetune"], classes, paths.plots / "confusion_matrix.png",
                          f"fine-tuned, test accuracy {scores['finetune']['accuracy']:.3f}")
    save_learning_curves({n: read_json(paths.history(n)) for n in RUNS}, paths.plots / "learning_curves.png")
    write_json(paths.report("metrics"), result)
    write_json(paths.report("per_class"), per_class)
    log.info("test accuracy: fine-tuned %.4f, scratch %.4f, %s", scores["finetune"]["accuracy"],
             scores["scratch"]["accuracy"], m.gain_statement(result))
    return result
