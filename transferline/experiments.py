"""Experiments beside the pipeline: the label-efficiency curve and the
fine-tuning strategy table.

Each trial reuses the pipeline's ingested data (data/raw) and pretrained
backbone (models/pretrain) and runs the real stage functions (split,
preprocess, finetune, evaluate) in its own folder under
.transferline/experiments/, so the pipeline's outputs and DVC state are
never touched. Every trial is a nested MLflow run; the tables and the plot
land in reports/experiments/.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from transferline.config import Params
from transferline.io import write_json

log = logging.getLogger(__name__)

WORK = Path(".transferline/experiments")
OUT = Path("reports/experiments")
NEEDED = (Path("data/raw"), Path("models/pretrain/model.safetensors"))


class ExperimentError(RuntimeError):
    """The experiment cannot start; the message says what to run first."""


@contextlib.contextmanager
def trial_dir(name: str) -> Iterator[Path]:
    """A folder that sees the pipeline's raw data and pretrained weights; cwd inside it."""
    missing = [str(p) for p in NEEDED if not p.exists()]
    if missing:
        raise ExperimentError(f"{', '.join(missing)} not found; run `transferline run --until pretrain` first")
    root = Path.cwd()
    work = (WORK / name).resolve()
    (work / "data").mkdir(parents=True, exist_ok=True)
    (work / "models").mkdir(parents=True, exist_ok=True)
    for link, target in ((work / "data/raw", root / "data/raw"), (work / "models/pretrain", root / "models/pretrain")):
        if not link.is_symlink():
            link.symlink_to(target, target_is_directory=True)
    os.chdir(work)
    try:
        yield work
    finally:
        os.chdir(root)


def run_trial(name: str, params: Params, inits: tuple[str, ...]) -> dict[str, dict]:
    """Split, preprocess, train one model per init, evaluate; {init: metrics + seconds}."""
    from tasks.evaluate import load_model, test_metrics
    from tasks.finetune import train_target
    from tasks.preprocess import load_set, preprocess
    from tasks.split import split

    with trial_dir(name):
        split(params.split, params.seed)
        preprocess(params)
        data = load_set("target")
        results = {}
        for init in inits:
            # never models/pretrain: that is the pipeline's own folder, linked in read-only use
            out = Path("models") / ("scratch" if init == "scratch" else "finetune")
            t0 = time.perf_counter()
            history = train_target(params, init, out, Path("reports") / f"{out.name}_history.json")
            seconds = time.perf_counter() - t0
            model = load_model(out / "model.safetensors")
            results[init] = {**test_metrics(model, data, params), "train_seconds": round(seconds, 1),
                             "epochs_run": len(history)}
    return results


def _log_trial(parent: str, name: str, params_flat: dict, metrics: dict) -> None:
    import mlflow

    with mlflow.start_run(run_name=name, nested=True, parent_run_id=parent):
        mlflow.log_params(params_flat)
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})


def label_efficiency(params: Params) -> list[dict]:
    """Fine-tuned vs scratch test accuracy for every budget x seed in params.experiments."""
    import mlflow

    from transferline import tracking

    cfg = params.experiments
    tracking.configure(params.tracking)
    rows = []
    with mlflow.start_run(run_name="label-efficiency") as parent:
        for budget in cfg.budgets:
            for seed in cfg.seeds:
                trial = params.model_copy(update={
                    "seed": seed, "split": params.split.model_copy(update={"labels_per_class": budget})})
                res = run_trial(f"labels{budget}_seed{seed}", trial, ("pretrain", "scratch"))
                row = {"labels_per_class": budget, "seed": seed,
                       "finetune_accuracy": res["pretrain"]["accuracy"], "scratch_accuracy": res["scratch"]["accuracy"],
                       "finetune_seconds": res["pretrain"]["train_seconds"]}
                row["gain"] = round(row["finetune_accuracy"] - row["scratch_accuracy"], 5)
                rows.append(row)
                _log_trial(parent.info.run_id, f"labels{budget}_seed{seed}",
                           {"labels_per_class": budget, "seed": seed},
                           {k: v for k, v in row.items() if k not in ("labels_per_class", "seed")})
                log.info("labels/class %d seed %d: fine-tuned %.4f scratch %.4f", budget, seed,
                         row["finetune_accuracy"], row["scratch_accuracy"])
        summary = summarise(rows)
        write_outputs("label_efficiency", rows, summary)
        plot_label_efficiency(summary, OUT / "label_efficiency.png")
        mlflow.log_artifacts(str(OUT), "experiments")
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds, per budget."""
    out = []
    for budget in sorted({r["labels_per_class"] for r in rows}):
        sel = [r for r in rows if r["labels_per_class"] == budget]
        ft = np.array([r["finetune_accuracy"] for r in sel])
        sc = np.array([r["scratch_accuracy"] for r in sel])
        out.append({"labels_per_class": budget, "seeds": len(sel),
                    "finetune_mean": round(float(ft.mean()), 4), "finetune_std": round(float(ft.std()), 4),
                    "scratch_mean": round(float(sc.mean()), 4), "scratch_std": round(float(sc.std()), 4),
                    "gain_mean": round(float((ft - sc).mean()), 4)})
    return out


def plot_label_efficiency(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [s["labels_per_class"] for s in summary]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("finetune", "fine-tuned (pretrained on MNIST)"), ("scratch", "from scratch")):
        mean = np.array([s[f"{key}_mean"] for s in summary])
        std = np.array([s[f"{key}_std"] for s in summary])
        ax.plot(x, mean, "o-", label=label)
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax.set(xscale="log", xlabel="labels per class", ylabel="test accuracy", title="label efficiency")
    ax.set_xticks(x, [str(v) for v in x])
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def compare_strategies(params: Params) -> list[dict]:
    """Test accuracy and train time of every strategy in params.experiments, one seed."""
    import mlflow

    from transferline import tracking

    tracking.configure(params.tracking)
    rows = []
    with mlflow.start_run(run_name="strategies") as parent:
        base = run_trial("strategies_scratch", params, ("scratch",))["scratch"]
        rows.append({"strategy": "scratch (baseline)", **_pick(base)})
        for strategy in params.experiments.strategies:
            trial = params.model_copy(update={"finetune": params.finetune.model_copy(update={"strategy": strategy})})
            res = run_trial(f"strategy_{strategy}", trial, ("pretrain",))["pretrain"]
            rows.append({"strategy": strategy, **_pick(res)})
            _log_trial(parent.info.run_id, strategy, {"strategy": strategy}, _pick(res))
            log.info("%s: %.4f in %.1f s", strategy, res["accuracy"], res["train_seconds"])
        write_outputs("compare_strategies", rows, rows)
        mlflow.log_artifacts(str(OUT), "experiments")
    return rows


def _pick(res: dict) -> dict:
    return {k: res[k] for k in ("accuracy", "macro_f1", "train_seconds", "epochs_run")}


def write_outputs(name: str, rows: list[dict], table: list[dict]) -> None:
    """rows as CSV, the table as Markdown and JSON."""
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    head = list(table[0])
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(str(r[h]) for h in head) + " |" for r in table]
    (OUT / f"{name}.md").write_text("\n".join(md) + "\n")
    write_json(OUT / f"{name}.json", table)

