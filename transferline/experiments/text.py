"""`transferline experiment text-models`: test accuracy and train time per epoch
of every model in params.yaml `experiments.text.text_models` (MiniLM full and
LoRA, our MLM-pretrained encoder, the same encoder from scratch, a BiLSTM), on
the text pipeline's own split and label budget, or a seeded subset of that
budget (`labels_per_class`), each trial over one or more seeds (mean and spread).

Needs `transferline run --modality text --until pretrain`. A trial runs the
text stage functions (finetune's `train_one`, evaluate's `test_predictions`,
and preprocess for a model with its own tokenizer) with two `Paths`: it reads
the pipeline's raw data, split, token ids and pretrained encoder from
`params.paths`, and writes its models and reports below
.transferline/experiments/text/<key>/ (`paths.under`); a pretrained model
folder gets the split re-tokenized with its own tokenizer into that folder.
The pipeline's outputs are never written. Each trial is a nested MLflow run;
the table lands in reports/experiments/text_models.{csv,md,json,png}.
"""

from __future__ import annotations

import logging
import re
import statistics
import time
from pathlib import Path

from transferline.config import Params
from transferline.config.text import TextTrial
from transferline.experiments import OUT, ExperimentError, write_outputs
from transferline.io import read_json
from transferline.paths import Paths

log = logging.getLogger(__name__)

WORK = Path(".transferline/experiments/text")
COLUMNS = ("model", "labels_per_class", "test_accuracy", "test_accuracy_sd", "seeds", "test_macro_f1",
           "seconds_per_epoch", "epochs", "train_texts", "trainable_params", "init_from", "arch", "strategy", "lr",
           "best_val_accuracy", "test_accuracy_per_seed", "total_seconds")


def trial_paths(params: Params, key: str) -> tuple[Paths, Paths]:
    """(where a trial reads, where it writes). It writes below WORK/<key>; it reads the
    pipeline's raw data, split and pretrained encoder, and the pipeline's token ids
    (key "pipeline": our tokenizer) or its own, made in its folder by preprocess."""
    pipeline = params.paths
    own = pipeline.under(WORK / re.sub(r"[^A-Za-z0-9_.-]+", "_", key))
    if key == "pipeline":
        return pipeline, own
    return pipeline.model_copy(update={"processed": own.processed}), own


def check_inputs(params: Params, init_from: str) -> None:
    """Fail with the command to run when the pipeline has not made what a trial reads."""
    from transferline.checkpoint import read_meta
    from transferline.text import data as td

    paths = params.paths
    needed = [td.split_file(paths, "train"), td.tokenizer_file(paths)]
    if init_from == "pretrain":
        needed.append(paths.weights("pretrain"))
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise ExperimentError(f"{', '.join(missing)} not found; run `transferline run --modality text --until pretrain` first")
    if init_from == "pretrain" and read_meta(paths.weights("pretrain")).get("objective") == "none":
        raise ExperimentError("a trial starts from pretrain but pretrain.text.steps is 0 (nothing was pretrained): "
                              "set pretrain.text.steps and run `transferline run --modality text --until pretrain`")


def _with(params: Params, trial: TextTrial) -> Params:
    """params with the trial's init_from, and the tokenizer that goes with it."""
    text = params.text
    tokenizer = trial.init_from if trial.init_from not in ("pretrain", "scratch") else text.preprocess.tokenizer
    return params.model_copy(update={"text": text.model_copy(update={
        "finetune": text.finetune.model_copy(update={"candidates": ["scratch", trial.init_from]}),
        "preprocess": text.preprocess.model_copy(update={"tokenizer": tokenizer}),
    })})


def run_text_trial(params: Params, trial: TextTrial) -> dict:
    """Train one model per seed on the label budget and test it; mean (and spread over seeds)
    of accuracy and F1, seconds per epoch."""
    from transferline.checkpoint import read_meta
    from transferline.metrics import classification_scores
    from transferline.text import data as td
    from transferline.text import evaluate, finetune, preprocess
    from transferline.text.models import load_classifier

    slug = re.sub(r"[^a-z0-9]+", "_", trial.name.lower()).strip("_")
    p = _with(params, trial)
    check_inputs(params, trial.init_from)
    uses_pipeline_tokens = trial.init_from in ("pretrain", "scratch")
    # a model's own tokenization is made per trial: trials may run side by side
    paths, out = trial_paths(params, "pipeline" if uses_pipeline_tokens else f"{trial.init_from}-{slug}")
    if not uses_pipeline_tokens:  # seconds; never stale against the pipeline's split
        preprocess.run(p, paths)
    meta = td.processed_meta(paths)
    runs = []
    for seed in trial.seeds or [params.seed]:
        ps = p.model_copy(update={"seed": seed})
        t0 = time.perf_counter()
        # the start's own batch size, warm-up and weight decay; the trial's rate and epochs
        train = ps.text.training_for(trial.init_from).model_copy(update={"lr": trial.lr, "epochs": trial.epochs})
        history = finetune.train_one(ps, paths, slug, trial.init_from, trial.model, trial.strategy, train,
                                     labels_per_class=trial.labels_per_class, out=out)
        total = time.perf_counter() - t0
        y_true, y_pred = evaluate.test_predictions(load_classifier(out.weights(slug)), ps, paths, meta)
        scores = classification_scores(y_true, y_pred)
        runs.append({"seed": seed, "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"],
                     "best_val": max(h["val_acc"] for h in history), "epochs": len(history), "total": total,
                     "per_epoch": sum(h["train_seconds"] for h in history) / len(history)})
        log.info("%s, seed %d: test accuracy %.4f", trial.name, seed, runs[-1]["accuracy"])
    saved = read_meta(out.weights(slug))
    accs = [r["accuracy"] for r in runs]
    return {
        "model": trial.name, "init_from": trial.init_from, "arch": trial.model, "strategy": trial.strategy,
        "lr": trial.lr, "epochs": max(r["epochs"] for r in runs), "trainable_params": saved.get("trainable_params"),
        "labels_per_class": trial.labels_per_class or params.text.split.labels_per_class,
        "train_texts": saved.get("train_texts"),
        "seeds": len(runs),
        "test_accuracy": round(statistics.mean(accs), 4),
        "test_accuracy_sd": round(statistics.stdev(accs), 4) if len(accs) > 1 else 0.0,
        "test_accuracy_per_seed": " ".join(f"{a:.4f}" for a in accs),
        "test_macro_f1": round(statistics.mean(r["macro_f1"] for r in runs), 4),
        "best_val_accuracy": round(statistics.mean(r["best_val"] for r in runs), 4),
        "seconds_per_epoch": round(statistics.mean(r["per_epoch"] for r in runs), 1),
        "total_seconds": round(sum(r["total"] for r in runs), 1),
    }


def previous_rows(names: list[str]) -> dict[str, dict]:
    """Rows of an earlier text_models.json for trials still listed in params."""
    path = OUT / "text_models.json"
    if not path.is_file():
        return {}
    return {r["model"]: r for r in read_json(path) if r.get("model") in names}


def text_models(params: Params, only: list[str] | None = None) -> list[dict]:
    """Every trial in params.text.experiments.text_models (or those named in `only`; the
    other listed trials keep their row from the last run); writes reports/experiments/text_models.*"""
    import mlflow

    from transferline import tracking

    if params.modality != "text":
        raise ExperimentError("params.yaml has modality: image; run `transferline run --modality text --until pretrain` first")
    trials = params.text.experiments.text_models
    names = [t.name for t in trials]
    unknown = [n for n in only or [] if n not in names]
    if unknown:
        raise ExperimentError(f"--trial {unknown[0]!r} is not in experiments.text.text_models ({', '.join(names)})")
    budget = params.text.split.labels_per_class
    for trial in trials:
        if trial.labels_per_class > budget:
            raise ExperimentError(f"experiments.text.text_models {trial.name!r}: labels_per_class {trial.labels_per_class} "
                                  f"is more than the pipeline's budget (split.text.labels_per_class: {budget}); "
                                  "raise that and rerun the pipeline, or lower this")
    results: dict[str, dict] = {}
    tracking.configure(params.tracking)
    rows: list[dict] = []
    with mlflow.start_run(run_name="text-models"):
        for trial in trials:
            if only and trial.name not in only:
                continue
            log.info("trial: %s", trial.name)
            row = run_text_trial(params, trial)
            results[trial.name] = row
            with mlflow.start_run(run_name=trial.name, nested=True, tags={"trial": trial.name}):
                mlflow.log_params(trial.model_dump())
                mlflow.log_metrics({k: row[k] for k in ("test_accuracy", "test_accuracy_sd", "test_macro_f1",
                                                        "seconds_per_epoch", "total_seconds")})
            log.info("%s: test accuracy %.4f, %.0f s per epoch", trial.name, row["test_accuracy"], row["seconds_per_epoch"])
            # re-read before writing: another `--trial` run may have finished a row meanwhile
            merged = {**(previous_rows(names) if only else {}), **results}
            rows = [{k: merged[n].get(k, "") for k in COLUMNS} for n in names if n in merged]
            write_outputs("text_models", rows, rows)  # partial results survive an interrupted run
            plot_text_models(rows, OUT / "text_models.png")
        mlflow.log_artifacts(str(OUT), "experiments")
    return rows


def plot_text_models(rows: list[dict], path: Path) -> None:
    """Horizontal bars: mean test accuracy per model, a line for the spread over seeds,
    seconds per epoch at the bar's end."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("test_accuracy") != ""]
    labels = [r["model"] if r.get("labels_per_class") in ("", None) or f"@{r['labels_per_class']}" in r["model"]
              else f"{r['model']} ({r['labels_per_class']}/class)" for r in rows]
    acc = [r["test_accuracy"] for r in rows]
    sd = [r.get("test_accuracy_sd") or 0.0 for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.2))
    y = range(len(rows))[::-1]
    ax.barh(list(y), acc, xerr=sd, color="tab:blue", alpha=0.8, capsize=3)
    for yi, a, s, r in zip(y, acc, sd, rows):
        ax.text(a + s + 0.01, yi, f"{a:.3f}  ({r['seconds_per_epoch']} s/epoch)", va="center", fontsize=8)
    ax.set_yticks(list(y), labels, fontsize=8)
    ax.set(xlim=(0.5, 1.0), xlabel="test accuracy (mean over seeds; line: sd)", title="text models, Rotten Tomatoes")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
