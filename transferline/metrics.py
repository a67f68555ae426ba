"""The one place test scores are computed: evaluate, the promotion gate and
every experiment, in both modalities, call these.

Every score comes from one confusion matrix, with scikit-learn's definitions
(accuracy_score, f1_score(average="macro"), classification_report with
zero_division=0); tests/test_metrics.py checks each against scikit-learn on
random labels. Not scikit-learn itself: importing it loads SciPy, 2.5-2.9 s
on two cores (`python -X importtime`), which the evaluate and promote stages
each paid in a process of their own on every run, for a few sums.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

Labels = Sequence[Any]  # class indices or class names, one per example


def confusion(y_true: Labels, y_pred: Labels, labels: Sequence[Any] | None = None) -> tuple[np.ndarray, list]:
    """(counts, labels): counts[i, j] = examples of class labels[i] predicted as labels[j].

    `labels` default: every label in either sequence, sorted (scikit-learn's unique_labels);
    a label outside an explicit `labels` is not counted."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    labels = sorted({*y_true, *y_pred}) if labels is None else list(labels)
    index, n = {label: i for i, label in enumerate(labels)}, len(labels)
    cells = [index[t] * n + index[p] for t, p in zip(y_true, y_pred) if t in index and p in index]
    return np.bincount(np.asarray(cells, dtype=np.int64), minlength=n * n).reshape(n, n), labels


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0 (zero_division=0)."""
    return np.divide(num, den, out=np.zeros(len(num)), where=den > 0)


def _accuracy(counts: np.ndarray) -> float:
    return float(np.trace(counts) / max(counts.sum(), 1))


def _precision_recall_f1(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    tp = np.diag(counts).astype(np.float64)
    predicted, support = counts.sum(axis=0), counts.sum(axis=1)
    return _ratio(tp, predicted), _ratio(tp, support), _ratio(2 * tp, predicted + support), support


def classification_scores(y_true: Labels, y_pred: Labels) -> dict[str, float]:
    """{"accuracy", "macro_f1"}, rounded to 5 decimals (the figures every report shows)."""
    counts, _ = confusion(y_true, y_pred)
    _, _, f1, _ = _precision_recall_f1(counts)
    return {
        "accuracy": round(_accuracy(counts), 5),
        "macro_f1": round(float(f1.mean()) if len(f1) else 0.0, 5),
    }


def per_class_scores(y_true: Labels, y_pred: Labels, classes: Sequence[str]) -> dict[str, dict]:
    """Precision, recall, F1 and support per class name (plus accuracy and the averages), keyed
    as scikit-learn's classification_report(output_dict=True): y_true and y_pred hold indices."""
    counts, _ = confusion(y_true, y_pred, range(len(classes)))
    precision, recall, f1, support = _precision_recall_f1(counts)
    report: dict[str, Any] = {
        name: {"precision": float(p), "recall": float(r), "f1-score": float(f), "support": float(s)}
        for name, p, r, f, s in zip(classes, precision, recall, f1, support)
    }
    report["accuracy"] = _accuracy(counts)
    total, weights = float(support.sum()), support if support.sum() > 0 else None
    for name, weighted in (("macro avg", None), ("weighted avg", weights)):
        report[name] = {key: float(np.average(values, weights=weighted))
                        for key, values in (("precision", precision), ("recall", recall), ("f1-score", f1))}
        report[name]["support"] = total
    return report


def transfer_gain(finetuned: dict[str, float], baseline: dict[str, float]) -> dict[str, float]:
    """Fine-tuned minus baseline, per score."""
    return {k: round(finetuned[k] - baseline[k], 5) for k in ("accuracy", "macro_f1")}


INTERVAL = 0.95  # the transfer gain's interval: the middle 95 % of its paired bootstrap
RESAMPLES = 10_000  # enough that the interval's ends move by under 0.001 between seeds


def paired_gain_interval(y_true: Labels, finetuned: Labels, baseline: Labels, seed: int = 0) -> dict[str, float]:
    """{"accuracy_low", "accuracy_high"}: the INTERVAL range of the accuracy gain (finetuned minus
    baseline) over test sets drawn like this one: a paired bootstrap, both models scored on the
    same resampled examples. Each example favours the fine-tuned model, the baseline or neither,
    so one resample is one multinomial draw of those three counts: the distribution of
    resampling the examples, without a RESAMPLES x n index array (tests/test_metrics.py checks
    it against SciPy's bootstrap)."""
    y = np.asarray(y_true)
    right, base_right = np.asarray(finetuned) == y, np.asarray(baseline) == y
    n = len(y)
    if n == 0:
        return {"accuracy_low": 0.0, "accuracy_high": 0.0}
    wins, losses = int((right & ~base_right).sum()), int((~right & base_right).sum())
    draws = np.random.default_rng(seed).multinomial(n, [wins / n, losses / n, (n - wins - losses) / n], RESAMPLES)
    tail = (1 - INTERVAL) / 2
    low, high = np.quantile((draws[:, 0] - draws[:, 1]) / n, [tail, 1 - tail])
    return {"accuracy_low": round(float(low), 5), "accuracy_high": round(float(high), 5)}


def gain_statement(metrics: dict) -> str:
    """The accuracy gain, its interval and what the interval says (metrics.json's figures), as
    the run summary, the run report and the model card print it."""
    return difference_statement("transfer gain", metrics["transfer_gain"]["accuracy"],
                                metrics.get("transfer_gain_ci95"), metrics.get("n_test", 0))


def difference_statement(what: str, difference: float, interval: dict | None, n: int) -> str:
    """`what` (an accuracy difference) with its paired_gain_interval and what that says."""
    if interval is None:  # figures from before the interval
        return f"{what} {difference:+.4f}"
    low, high = interval["accuracy_low"], interval["accuracy_high"]
    if low == high == 0:
        meaning = "the two models agree on every test example"
    elif low > 0:
        meaning = "a real gain"
    elif high < 0:
        meaning = "a real loss"
    else:
        meaning = "not proven: the interval holds 0, more test examples would tell"
    return f"{what} {difference:+.4f} ({INTERVAL:.0%} interval {low:+.4f} .. {high:+.4f} over {n} test examples: {meaning})"
