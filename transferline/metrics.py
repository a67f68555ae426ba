"""The one place test scores are computed: evaluate, the promotion gate and
every experiment, in both modalities, call these (scikit-learn underneath)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Labels = Sequence[Any]  # class indices or class names, one per example


def classification_scores(y_true: Labels, y_pred: Labels) -> dict[str, float]:
    """{"accuracy", "macro_f1"}, rounded to 5 decimals (the figures every report shows)."""
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": round(float(accuracy_score(y_true, y_pred)), 5),
        "macro_f1": round(float(f1_score(y_true, y_pred, average="macro")), 5),
    }


def per_class_scores(y_true: Labels, y_pred: Labels, classes: Sequence[str]) -> dict[str, dict]:
    """Precision, recall, F1 and support per class name (plus the averages)."""
    from sklearn.metrics import classification_report

    return classification_report(y_true, y_pred, labels=range(len(classes)), target_names=list(classes),
                                 output_dict=True, zero_division=0)


def confusion_counts(y_true: Labels, y_pred: Labels, n_classes: int) -> list[list[int]]:
    """Rows: true class; columns: predicted class."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(y_true, y_pred, labels=range(n_classes)).tolist()


def transfer_gain(finetuned: dict[str, float], baseline: dict[str, float]) -> dict[str, float]:
    """Fine-tuned minus baseline, per score."""
    return {k: round(finetuned[k] - baseline[k], 5) for k in ("accuracy", "macro_f1")}
