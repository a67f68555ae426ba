"""Real models of known, graded quality, for the gate's tests and benchmark.

`make_gate_project` writes a small project folder (a real Animal-MNIST test
split and preprocessing stats) and fits one SmallCNN on real images. `graded` derives weaker models from it by silencing classes in
its head (a silenced class is never predicted), so "better" and "worse" are
known without trusting anyone's metrics. `register_weights` registers one
through the real register stage.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transferline.checkpoint import save_weights
from transferline.config import Params
from transferline.io import save_arrays, write_json
from transferline.image.models import SmallCNN
from transferline.metrics import classification_scores
from transferline.promotion import TestSet

CLASSES = ("cat", "dog", "fish", "bird", "horse", "cow", "pig", "sheep", "rabbit", "frog")


def make_gate_project(dest: Path, x: np.ndarray, y: np.ndarray, train_per_class: int = 100,
                      test_per_class: int = 30, seed: int = 0) -> tuple[SmallCNN, TestSet]:
    """dest/data/split/target.npz + data/processed/meta.json, and a SmallCNN trained on the train part."""
    if x.ndim == 4:  # (N, 1, H, W) greyscale -> (N, H, W), as the pyfunc takes it
        x = x[:, 0]
    rng = np.random.default_rng(seed)
    classes = list(CLASSES[: int(y.max()) + 1])
    train, test = [], []
    for c in range(len(classes)):
        idx = rng.permutation(np.flatnonzero(y == c))
        test.append(idx[:test_per_class])
        train.append(idx[test_per_class : test_per_class + train_per_class])
    tr, te = np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
    save_arrays(dest / "data/split/target.npz", x_train=x[tr], y_train=y[tr], x_val=x[tr[:0]], y_val=y[tr[:0]],
                x_test=x[te], y_test=y[te])
    mean, std = float(x[tr].mean() / 255), float(x[tr].std() / 255)
    prep = {"mean": [mean], "std": [std], "classes": classes, "image_size": int(x.shape[-1]), "channels": 1,
            "n": int(len(tr))}
    write_json(dest / "data/processed/meta.json", {"target": prep})

    # A real classifier without minutes of backprop on a shared CPU: a seeded random
    # conv backbone (batch-norm statistics from the training images) and a head fitted
    # by logistic regression on its features (~0.65 test accuracy on 10 classes).
    from sklearn.linear_model import LogisticRegression

    torch.manual_seed(seed)
    model = SmallCNN(num_classes=len(classes))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # cumulative: one pass gives the data's statistics
            module.reset_running_stats()
    images = lambda idx: (torch.from_numpy(x[idx]).float()[:, None] / 255 - mean) / std  # noqa: E731
    with torch.no_grad():
        model.train()
        model.backbone(images(tr))
        model.eval()
        feats = model.backbone(images(tr)).numpy()
    mu, sd = feats.mean(0), feats.std(0) + 1e-6
    lr = LogisticRegression(max_iter=2000).fit((feats - mu) / sd, y[tr])
    head: nn.Linear = model.head[-1]
    with torch.no_grad():  # fold the standardisation into the linear head
        head.weight.copy_(torch.from_numpy(lr.coef_ / sd).float())
        head.bias.copy_(torch.from_numpy(lr.intercept_ - (lr.coef_ * mu / sd).sum(1)).float())
    return model, TestSet(x[te], [classes[int(i)] for i in y[te]], str(dest / "data/split/target.npz"))


def graded(model: SmallCNN, silenced: int) -> SmallCNN:
    """A copy of `model` that never predicts its last `silenced` classes."""
    weaker = copy.deepcopy(model)
    if silenced:
        head: nn.Linear = weaker.head[-1]
        with torch.no_grad():
            head.weight[-silenced:] = 0
            head.bias[-silenced:] = -1e4
    return weaker


def predict_names(model: SmallCNN, test: TestSet, mean: float, std: float) -> list[str]:
    with torch.inference_mode():
        x = (torch.from_numpy(test.x).float()[:, None] / 255 - mean) / std
        return [list(CLASSES)[i] for i in model(x).argmax(1).tolist()]


def register_weights(params: Params, model: SmallCNN, project: Path, claimed: dict | None = None) -> dict:
    """Register `model` through the image register stage, on the project's folders; metrics.json
    holds its real test figures unless `claimed` overrides them (to show the gate does not trust them)."""
    from transferline.image import promote, register
    from transferline.image.data import processed_meta

    paths = params.paths.under(project)
    num_classes = model.head[-1].out_features
    save_weights(model, paths.weights("finetune"),
                 meta={"arch": "small_cnn", "num_classes": num_classes, "in_channels": 1})
    prep = processed_meta(paths)
    test = promote.test_set(paths)
    figures = claimed or classification_scores(test.y, predict_names(model, test, prep["mean"][0], prep["std"][0]))
    write_json(paths.report("metrics"), {"finetune": figures})
    return register.run(params, paths)
