"""Image experiments on the finetune stage's choice of starting point: the
label-efficiency curve (the registered model, i.e. the candidate chosen on
validation, vs scratch, per label budget and seed) and the transferability
check (does the LogME estimate rank the candidates as fine-tuning does?).

Each trial splits at its own budget and seed, copies the pipeline's
pretrain folder (its backbone and adapted starts), and runs the real
finetune stage (every candidate in `finetune.image.candidates`) and a test
prediction per candidate.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from transferline.config import Params
from transferline.experiments import ExperimentError, trial_paths, write_outputs
from transferline.experiments.trials import end_parent, run_trials, trial_spec

log = logging.getLogger(__name__)

MODULE = __name__


def run_trial(name: str, params: Params, inits: tuple[str, ...], pretrain: bool = False) -> dict[str, dict]:
    """Split, preprocess, the finetune stage's candidates; {candidate: test scores, estimate, val}."""
    from transferline.candidates import folder_name
    from transferline.image import finetune, preprocess, split
    from transferline.image.data import load_set
    from transferline.image.evaluate import predict_classes
    from transferline.image.models import load_classifier
    from transferline.metrics import classification_scores
    from transferline.runtime import resolve_device

    paths = trial_paths(params.paths, name)
    trial = params.model_copy(update={"paths": paths})
    split.run(trial, paths)
    preprocess.run(trial, paths)
    shutil.copytree(params.paths.model_dir("pretrain"), paths.model_dir("pretrain"), dirs_exist_ok=True)
    choice = finetune.run(trial, paths)
    data = load_set(paths, "target")
    device = resolve_device(params.device)
    results: dict[str, dict] = {"_choice": {"winner": choice["winner"]}}
    for row in choice["candidates"]:
        if row.get("skipped"):
            continue
        model = load_classifier(paths.weights(folder_name(row["candidate"])))
        predicted = predict_classes(model, data["x_test"], params.image.evaluate.batch_size, device)
        results[row["candidate"]] = {**classification_scores(data["y_test"].numpy(), predicted),
                                     "estimate": row["estimate"], "val_acc": row["val_acc"],
                                     "train_seconds": row["seconds"]}
    return results


def check_starts(params: Params) -> None:
    """Fail before Prefect and MLflow start when the pipeline's starts are missing."""
    from transferline.config.image import BUILT_STARTS

    folder = params.paths.model_dir("pretrain")
    needed = [params.paths.raw] + [folder / ("model.safetensors" if c == "pretrain" else f"{c}.safetensors")
                                   for c in params.image.finetune.candidates if c in BUILT_STARTS and c != "scratch"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise ExperimentError(f"{', '.join(missing)} not found; run `transferline run --until pretrain` first "
                              "(with pretrain.image.adapt.starts for the adapted candidates)")


def candidate_trials(params: Params, kind: str, budgets: list[int], seeds: list[int]) -> list[dict]:
    """One trial per budget x seed; one row per trial with every candidate's figures."""
    check_starts(params)
    specs = []
    for budget in budgets:
        for seed in seeds:
            trial = params.model_copy(update={"seed": seed, "image": params.image.model_copy(update={
                "split": params.image.split.model_copy(update={"labels_per_class": budget})})})
            specs.append(trial_spec(MODULE, f"{kind}_labels{budget}_seed{seed}", trial, ("candidates",),
                                    labels_per_class=budget, seed=seed))
    results, _ = run_trials(kind, specs, params)
    rows = []
    for spec, res in zip(specs, results):
        winner = res["_choice"]["winner"]
        row = {"labels_per_class": spec["log_params"]["labels_per_class"], "seed": spec["log_params"]["seed"],
               "winner": winner, "finetune_accuracy": res[winner]["accuracy"],
               "scratch_accuracy": res["scratch"]["accuracy"]}
        row["gain"] = round(row["finetune_accuracy"] - row["scratch_accuracy"], 5)
        for c in params.image.finetune.candidates:
            for key in ("estimate", "val_acc", "accuracy"):
                row[f"{c}.{key}"] = res.get(c, {}).get(key, "")
        rows.append(row)
        log.info("labels/class %d seed %d: %s %.4f, scratch %.4f", row["labels_per_class"], row["seed"], winner,
                 row["finetune_accuracy"], row["scratch_accuracy"])
    return rows


def label_efficiency(params: Params) -> list[dict]:
    """The registered model (the candidate chosen on validation) vs scratch, per budget x seed."""
    cfg = params.image.experiments
    rows = candidate_trials(params, "label-efficiency", cfg.budgets, cfg.seeds)
    summary = summarise(rows)
    write_outputs("label_efficiency", rows, summary, params.paths.experiments)
    plot_label_efficiency(summary, params.paths.experiments / "label_efficiency.png")
    end_parent(params.paths.experiments)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds, per budget, and which start won how often."""
    out = []
    for budget in sorted({r["labels_per_class"] for r in rows}):
        sel = [r for r in rows if r["labels_per_class"] == budget]
        ft = np.array([r["finetune_accuracy"] for r in sel])
        sc = np.array([r["scratch_accuracy"] for r in sel])
        winners = sorted({r["winner"] for r in sel})
        out.append({"labels_per_class": budget, "seeds": len(sel),
                    "finetune_mean": round(float(ft.mean()), 4), "finetune_std": round(float(ft.std()), 4),
                    "scratch_mean": round(float(sc.mean()), 4), "scratch_std": round(float(sc.std()), 4),
                    "gain_mean": round(float((ft - sc).mean()), 4), "gain_std": round(float((ft - sc).std()), 4),
                    "chosen": ", ".join(f"{w} x{sum(r['winner'] == w for r in sel)}" for w in winners)})
    return out


def plot_label_efficiency(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [s["labels_per_class"] for s in summary]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("finetune", "registered (best start on validation)"), ("scratch", "from scratch")):
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


def rank_correlation(test, xs: list, ys: list) -> float | str:
    """`test` (scipy's spearmanr or kendalltau) of xs vs ys, or "" where it is undefined (a
    constant column: every candidate tied, as a tiny run can score them)."""
    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return ""
    return round(float(test(xs, ys).statistic), 3)


def transferability(params: Params) -> list[dict]:
    """Rank correlation (Spearman) between each candidate's LogME estimate and its fine-tuned
    test accuracy, per budget (over candidates and seeds) and over all trials."""
    from scipy.stats import kendalltau, spearmanr

    cfg = params.image.experiments
    candidates = params.image.finetune.candidates
    if len(candidates) < 3:
        raise ExperimentError(f"finetune.image.candidates {candidates}: a rank correlation needs at least 3 "
                              "starting points (add pretrain-adapt or adapt with pretrain.image.adapt.starts)")
    rows = candidate_trials(params, "transferability", cfg.budgets, cfg.seeds)
    points = [(r["labels_per_class"], r["seed"], c, r[f"{c}.estimate"], r[f"{c}.accuracy"])
              for r in rows for c in candidates if r[f"{c}.accuracy"] != ""]

    table = []
    for budget in [*sorted({p[0] for p in points}), "all"]:
        sel = [p for p in points if budget == "all" or p[0] == budget]
        # within one trial (same labels): the question the shortlist asks; then pooled
        per_trial = [c for key in {(p[0], p[1]) for p in sel}
                     if len(t := [p for p in sel if (p[0], p[1]) == key]) > 2
                     and (c := rank_correlation(spearmanr, [p[3] for p in t], [p[4] for p in t])) != ""]
        table.append({"labels_per_class": budget, "points": len(sel),
                      "spearman_within_trial_mean": round(float(np.nanmean(per_trial)), 3) if per_trial else "",
                      "spearman_pooled": rank_correlation(spearmanr, [p[3] for p in sel], [p[4] for p in sel]),
                      "kendall_pooled": rank_correlation(kendalltau, [p[3] for p in sel], [p[4] for p in sel])})
    write_outputs("transferability", rows, table, params.paths.experiments)
    plot_transferability(points, params.paths.experiments / "transferability.png")
    end_parent(params.paths.experiments)
    return table


def plot_transferability(points: list[tuple], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted({p[0] for p in points})
    fig, axes = plt.subplots(1, len(budgets), figsize=(4 * len(budgets), 3.6), squeeze=False)
    for ax, budget in zip(axes[0], budgets):
        for c in sorted({p[2] for p in points}):
            sel = [p for p in points if p[0] == budget and p[2] == c]
            ax.scatter([p[3] for p in sel], [p[4] for p in sel], label=c)
        ax.set(title=f"{budget} labels per class", xlabel="LogME (frozen features)", ylabel="fine-tuned test accuracy")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
