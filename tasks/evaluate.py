"""evaluate: held-out metrics for the fine-tuned model and the scratch
baseline, the transfer gain between them, a confusion matrix and learning
curves.

Outputs reports/metrics.json (DVC metrics), reports/per_class.json, and
reports/plots/{confusion_matrix,learning_curves}.png.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import ConfusionMatrixDisplay, accuracy_score, classification_report, f1_score

from tasks._stage import run_main
from tasks.preprocess import load_set
from transferline.checkpoint import load_weights, read_meta
from transferline.config import Params
from transferline.io import read_json, write_json
from transferline.models import build_model
from transferline.runtime import resolve_device
from transferline.training import predict

log = logging.getLogger(__name__)

MODELS = Path("models")
REPORTS = Path("reports")
PLOTS = REPORTS / "plots"
META = Path("data/processed/meta.json")
RUNS = ("finetune", "scratch")


def load_model(weights: Path):
    meta = read_meta(weights)
    model = build_model(meta["arch"], meta["num_classes"], meta["in_channels"])
    model.load_state_dict(load_weights(weights))
    return model


def test_metrics(model, data: dict, params: Params) -> dict[str, float]:
    """Accuracy and macro-F1 of `model` on the cached test set."""
    device = resolve_device(params.device)
    y_true = data["y_test"].numpy()
    y_pred = predict(model.to(device), data["x_test"], params.evaluate.batch_size, device).argmax(1).numpy()
    return {
        "accuracy": round(float(accuracy_score(y_true, y_pred)), 5),
        "macro_f1": round(float(f1_score(y_true, y_pred, average="macro")), 5),
    }


def plot_learning_curves(histories: dict[str, list[dict]], path: Path) -> None:
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
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate(params: Params) -> dict:
    data = load_set("target")
    classes = read_json(META)["target"]["classes"]
    y_true = data["y_test"].numpy()
    device = resolve_device(params.device)
    metrics: dict[str, dict] = {}
    per_class = {}
    PLOTS.mkdir(parents=True, exist_ok=True)
    for name in RUNS:
        model = load_model(MODELS / name / "model.safetensors").to(device)
        y_pred = predict(model, data["x_test"], params.evaluate.batch_size, device).argmax(1).numpy()
        metrics[name] = {
            "accuracy": round(float(accuracy_score(y_true, y_pred)), 5),
            "macro_f1": round(float(f1_score(y_true, y_pred, average="macro")), 5),
        }
        per_class[name] = classification_report(
            y_true, y_pred, labels=range(len(classes)), target_names=classes, output_dict=True, zero_division=0
        )
        if name == "finetune":
            disp = ConfusionMatrixDisplay.from_predictions(
                y_true, y_pred, labels=range(len(classes)), display_labels=classes, xticks_rotation=45, colorbar=False
            )
            disp.ax_.set_title(f"fine-tuned, test accuracy {metrics[name]['accuracy']:.3f}")
            disp.figure_.tight_layout()
            disp.figure_.savefig(PLOTS / "confusion_matrix.png", dpi=100)
            plt.close(disp.figure_)
    metrics["transfer_gain"] = {
        k: round(metrics["finetune"][k] - metrics["scratch"][k], 5) for k in ("accuracy", "macro_f1")
    }
    metrics["n_test"] = int(len(y_true))
    histories = {name: read_json(REPORTS / f"{name}_history.json") for name in RUNS}
    plot_learning_curves(histories, PLOTS / "learning_curves.png")
    write_json(REPORTS / "metrics.json", metrics)
    write_json(REPORTS / "per_class.json", per_class)
    log.info("test accuracy: fine-tuned %.4f, scratch %.4f, gain %+.4f",
             metrics["finetune"]["accuracy"], metrics["scratch"]["accuracy"], metrics["transfer_gain"]["accuracy"])
    return metrics


def main(params: Params) -> None:
    if params.modality == "text":
        from transferline.text import stages

        stages.evaluate(params)
        return
    evaluate(params)


if __name__ == "__main__":
    run_main("evaluate", main)
