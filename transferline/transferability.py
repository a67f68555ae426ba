"""How well a starting point's frozen features suit the target task, in
seconds and before any fine-tuning: LogME (You et al., "LogME: Practical
Assessment of Pre-trained Models for Transfer Learning", ICML 2021).

Why LogME: it needs no training and no hyperparameter (unlike a linear or
kNN probe, whose score moves with its own learning rate, k or
regularisation), it runs on a few hundred labelled examples in well under a
second, and its published rank correlation with fine-tuned accuracy holds
across model families. It is the log marginal likelihood (evidence) of the
labels under Bayesian linear regression on the features, with the prior and
noise precisions (alpha, beta) set by the fixed-point iteration of MacKay's
evidence approximation; one regression per class (one-hot target), averaged.
Higher is better; values are per example, comparable across candidates on
the same labels.
"""

from __future__ import annotations

import numpy as np


def _class_evidence(y: np.ndarray, f: np.ndarray, eigvals: np.ndarray, eigvecs: np.ndarray) -> float:
    """Maximised log evidence per example of the regression f @ w ~ y (one class)."""
    n, d = f.shape
    alpha, beta = 1.0, 1.0
    projected = eigvecs.T @ (f.T @ y)  # y's correlation with each feature eigen-direction
    eps = 1e-5
    for _ in range(11):  # converges in a few steps (the paper: at most ~10)
        gamma = float((beta * eigvals / (alpha + beta * eigvals)).sum())  # effective parameter count
        m = eigvecs @ (beta * projected / (alpha + beta * eigvals))  # posterior mean weights
        alpha_de = float(m @ m) + eps
        beta_de = float(((y - f @ m) ** 2).sum()) + eps
        new_alpha, new_beta = gamma / alpha_de, (n - gamma) / beta_de
        converged = abs(new_alpha / new_beta - alpha / beta) / (alpha / beta) < 0.01
        alpha, beta = new_alpha, new_beta
        if converged:
            break
    evidence = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * np.log(alpha + beta * eigvals).sum()
                - beta / 2 * beta_de - alpha / 2 * alpha_de - n / 2 * np.log(2 * np.pi))
    return float(evidence / n)


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME of (N, D) features for integer class labels (N,): the mean over classes."""
    f = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if f.ndim != 2 or len(f) != len(labels) or len(f) < 2:
        raise ValueError(f"logme: features {f.shape} and labels {labels.shape} do not pair up")
    eigvals, eigvecs = np.linalg.eigh(f.T @ f)  # symmetric: eigh, and eigenvalues are >= 0 up to rounding
    eigvals = np.clip(eigvals, 0.0, None)
    return float(np.mean([_class_evidence((labels == c).astype(np.float64), f, eigvals, eigvecs)
                          for c in np.unique(labels)]))
