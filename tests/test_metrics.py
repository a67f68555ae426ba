"""transferline.metrics gives scikit-learn's figures (it computes them from one confusion
matrix to spare the stages scikit-learn's import): every score, on random labels with
classes missing from the truth, from the predictions or from both, as indices and as names."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

from transferline.metrics import classification_scores, confusion, paired_gain_interval, per_class_scores

CASES = [(n_classes, n, seed) for n_classes in (2, 3, 10) for n in (1, 7, 200) for seed in range(4)]


def labels(n_classes: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, n_classes, n)
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, n_classes, n))  # mostly right
    if n_classes > 2 and seed % 2:
        y_true[y_true == 1], y_pred[y_pred == 2] = 0, 0  # a class never true, another never predicted
    return y_true, y_pred


@pytest.mark.parametrize("n_classes, n, seed", CASES)
def test_scores_are_scikit_learns(n_classes, n, seed):
    y_true, y_pred = labels(n_classes, n, seed)
    names = np.array([f"class {i}" for i in range(n_classes)])
    for t, p in ((y_true, y_pred), (names[y_true].tolist(), names[y_pred].tolist())):  # indices, then names
        expected = {"accuracy": round(float(accuracy_score(t, p)), 5),
                    "macro_f1": round(float(f1_score(t, p, average="macro", zero_division=0)), 5)}
        assert classification_scores(t, p) == expected

    classes = [f"c{i}" for i in range(n_classes)]
    theirs = classification_report(y_true, y_pred, labels=range(n_classes), target_names=classes,
                                   output_dict=True, zero_division=0)
    ours = per_class_scores(y_true, y_pred, classes)
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key

    counts, order = confusion(y_true, y_pred, range(n_classes))
    assert counts.tolist() == confusion_matrix(y_true, y_pred, labels=range(n_classes)).tolist()
    assert order == list(range(n_classes))


def test_confusion_refuses_unequal_lengths():
    with pytest.raises(ValueError, match="3 true labels but 2 predictions"):
        confusion([0, 1, 1], [0, 1])


@pytest.mark.parametrize("n, favour", [(75, 0.02), (400, 0.0), (1941, 0.015)])
def test_the_gain_interval_is_scipys_paired_bootstrap(n, favour):
    """The multinomial shortcut gives the interval SciPy's paired percentile bootstrap gives for
    the same test set, and it holds the gain; a test set the models agree on has no spread."""
    from scipy.stats import bootstrap

    rng = np.random.default_rng(n)
    y = rng.integers(0, 3, n)
    baseline = np.where(rng.random(n) < 0.85, y, (y + 1) % 3)
    finetuned = np.where(rng.random(n) < favour * 4, y, baseline)  # fixes some of the baseline's errors
    finetuned = np.where(rng.random(n) < 0.03, (y + 2) % 3, finetuned)  # and makes a few of its own
    ours = paired_gain_interval(y, finetuned, baseline, seed=1)
    diff = (finetuned == y).astype(float) - (baseline == y)
    theirs = bootstrap((diff,), np.mean, n_resamples=10_000, method="percentile", rng=2).confidence_interval
    assert ours["accuracy_low"] == pytest.approx(theirs.low, abs=0.004)
    assert ours["accuracy_high"] == pytest.approx(theirs.high, abs=0.004)
    assert ours["accuracy_low"] <= diff.mean() <= ours["accuracy_high"]
    assert paired_gain_interval(y, baseline, baseline) == {"accuracy_low": 0.0, "accuracy_high": 0.0}
