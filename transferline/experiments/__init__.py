"""Experiments beside the pipeline: the label-efficiency curve, the
fine-tuning strategy table and the pretraining-objective comparison.

Each trial runs the real stage functions (split, preprocess, [pretrain,]
finetune, evaluate) in its own folder under .transferline/experiments/,
which sees the pipeline's ingested data (data/raw) and, unless the trial
pretrains itself, its pretrained backbone (models/pretrain); the pipeline's
outputs and DVC state are never touched. The trials are Prefect mapped tasks
(`trial.map`) of one flow run per experiment, at most
`experiments.workers` at a time; each runs in its own Python process (its
own working folder, cores/workers torch threads) and is a nested MLflow run
under the experiment's parent run. Tables and plots land in
reports/experiments/.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from transferline.config import Params
from transferline.io import read_json, write_json

log = logging.getLogger(__name__)

WORK = Path(".transferline/experiments")
OUT = Path("reports/experiments")
RAW = Path("data/raw")
PRETRAINED = Path("models/pretrain/model.safetensors")


class ExperimentError(RuntimeError):
    """The experiment cannot start or a trial failed; the message says what to do."""


@contextlib.contextmanager
def trial_dir(name: str, link_pretrain: bool = True) -> Iterator[Path]:
    """A folder that sees the pipeline's raw data (and pretrained weights); cwd inside it."""
    needed = (RAW, PRETRAINED) if link_pretrain else (RAW,)
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        until = "pretrain" if link_pretrain else "ingest"
        raise ExperimentError(f"{', '.join(missing)} not found; run `transferline run --until {until}` first")
    root = Path.cwd()
    work = (WORK / name).resolve()
    (work / "data").mkdir(parents=True, exist_ok=True)
    (work / "models").mkdir(parents=True, exist_ok=True)
    links = [(work / "data/raw", root / RAW)]
    if link_pretrain:
        links.append((work / "models/pretrain", root / "models/pretrain"))
    elif (work / "models/pretrain").is_symlink():  # an earlier trial of this name linked it
        (work / "models/pretrain").unlink()
    for link, target in links:
        if not link.is_symlink():
            link.symlink_to(target, target_is_directory=True)
    os.chdir(work)
    try:
        yield work
    finally:
        os.chdir(root)


def run_trial(name: str, params: Params, inits: tuple[str, ...], pretrain: bool = False) -> dict[str, dict]:
    """Split, preprocess, [pretrain,] train one model per init, evaluate; {init: metrics + seconds}.

    With `pretrain`, the trial pretrains its own backbone (params.pretrain)
    into its own models/pretrain instead of using the pipeline's.
    """
    from tasks.evaluate import load_model, test_metrics
    from tasks.finetune import train_target
    from tasks.preprocess import load_set, preprocess
    from tasks.split import split

    with trial_dir(name, link_pretrain="pretrain" in inits and not pretrain):
        split(params.split, params.seed)
        preprocess(params)
        data = load_set("target")
        results: dict[str, dict] = {}
        if pretrain:
            from tasks.pretrain import pretrain as pretrain_stage

            t0 = time.perf_counter()
            history = pretrain_stage(params)
            results["_pretrain"] = {"pretrain_seconds": round(time.perf_counter() - t0, 1),
                                    "pretrain_epochs": len(history), "pretrain_val_acc": history[-1]["val_acc"]}
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


# --- trials as Prefect mapped tasks, each in its own process ------------------------------------

def trial_spec(name: str, params: Params, inits: tuple[str, ...], pretrain: bool = False, **log_params) -> dict:
    """What a trial task needs, as plain JSON-able values."""
    return {"name": name, "params": params.model_dump(mode="json", by_alias=True), "inits": list(inits),
            "pretrain": pretrain, "log_params": log_params}


def _run_in_process(spec: dict, threads: int) -> dict[str, dict]:
    """Run one trial in a fresh Python process (its own cwd and torch threads); its results."""
    folder = (WORK / spec["name"]).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "spec.json", spec)
    result = folder / "result.json"
    result.unlink(missing_ok=True)
    env = {**os.environ, "TRANSFERLINE_TRIAL_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-m", "transferline.experiments", str(folder / "spec.json")],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    (folder / "trial.log").write_text(proc.stderr)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise ExperimentError(f"trial {spec['name']} failed (log: {folder / 'trial.log'}):\n{tail}")
    return read_json(result)


def _trial_task():
    """The Prefect task, built on first use (importing Prefect costs seconds)."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    @task(name="trial", task_run_name="{spec[name]}", cache_policy=NO_CACHE)
    def trial(spec: dict, parent_run_id: str, experiment_id: str, threads: int) -> dict[str, dict]:
        """One trial, recorded as a nested MLflow run of the experiment's parent run."""
        from mlflow import MlflowClient
        from mlflow.entities import Metric, Param

        client = MlflowClient()
        run = client.create_run(experiment_id, run_name=spec["name"],
                                tags={"mlflow.parentRunId": parent_run_id, "trial": spec["name"]})
        run_id = run.info.run_id
        try:
            results = _run_in_process(spec, threads)
        except Exception:
            client.set_terminated(run_id, "FAILED")
            raise
        now = int(time.time() * 1000)
        metrics = [Metric(k if init.startswith("_") else f"{init}.{k}", float(v), now, 0)
                   for init, res in results.items() for k, v in res.items() if isinstance(v, (int, float))]
        client.log_batch(run_id, metrics=metrics,
                         params=[Param(k, str(v)) for k, v in spec["log_params"].items()])
        client.set_terminated(run_id, "FINISHED")
        return results

    return trial


def run_trials(kind: str, specs: list[dict], params: Params) -> tuple[list[dict[str, dict]], str]:
    """Run the trials as one Prefect flow run of mapped tasks, under one parent MLflow run
    named `kind`; return (results in spec order, parent run id). The parent run stays open
    for the caller to attach tables to: the caller ends it with `end_parent`."""
    import mlflow
    from prefect import flow, unmapped
    from prefect.task_runners import ThreadPoolTaskRunner

    from transferline import tracking

    workers = params.experiments.workers
    threads = max(1, (os.cpu_count() or 1) // workers)
    trial = _trial_task()

    @flow(name="experiment", flow_run_name=kind, task_runner=ThreadPoolTaskRunner(max_workers=workers))
    def experiment(specs: list[dict], parent_run_id: str, experiment_id: str) -> list[dict[str, dict]]:
        futures = trial.map(specs, unmapped(parent_run_id), unmapped(experiment_id), unmapped(threads))
        return [f.result() for f in futures]

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect API call otherwise
    tracking.configure(params.tracking)
    parent = mlflow.start_run(run_name=kind)
    log.info("%s: %d trials, %d at a time, %d torch threads each", kind, len(specs), workers, threads)
    try:
        results = experiment(specs, parent.info.run_id, parent.info.experiment_id)
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    return results, parent.info.run_id


def end_parent() -> None:
    """Attach the tables to the parent run and close it."""
    import mlflow

    mlflow.log_artifacts(str(OUT), "experiments")
    mlflow.end_run()


def _check_needs(pretrained: bool, params: Params | None = None) -> None:
    """Fail before Prefect and MLflow start when the pipeline's inputs are missing."""
    if pretrained and params is not None and params.pretrain.objective != "supervised" \
            and "target" in params.pretrain.unlabelled:
        log.warning("the pipeline's backbone was pretrained (unlabelled) on the target pool of the seed-%d split; "
                    "trials with another seed or label budget may test on images it has seen without labels",
                    params.seed)
    needed = (RAW, PRETRAINED) if pretrained else (RAW,)
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        until = "pretrain" if pretrained else "ingest"
        raise ExperimentError(f"{', '.join(missing)} not found; run `transferline run --until {until}` first")


def label_efficiency(params: Params) -> list[dict]:
    """Fine-tuned vs scratch test accuracy for every budget x seed in params.experiments."""
    cfg = params.experiments
    _check_needs(pretrained=True, params=params)
    specs = []
    for budget in cfg.budgets:
        for seed in cfg.seeds:
            trial = params.model_copy(update={
                "seed": seed, "split": params.split.model_copy(update={"labels_per_class": budget})})
            specs.append(trial_spec(f"labels{budget}_seed{seed}", trial, ("pretrain", "scratch"),
                                    labels_per_class=budget, seed=seed))
    results, _ = run_trials("label-efficiency", specs, params)
    rows = []
    for spec, res in zip(specs, results):
        budget, seed = spec["log_params"]["labels_per_class"], spec["log_params"]["seed"]
        row = {"labels_per_class": budget, "seed": seed,
               "finetune_accuracy": res["pretrain"]["accuracy"], "scratch_accuracy": res["scratch"]["accuracy"],
               "finetune_seconds": res["pretrain"]["train_seconds"]}
        row["gain"] = round(row["finetune_accuracy"] - row["scratch_accuracy"], 5)
        rows.append(row)
        log.info("labels/class %d seed %d: fine-tuned %.4f scratch %.4f", budget, seed,
                 row["finetune_accuracy"], row["scratch_accuracy"])
    summary = summarise(rows)
    write_outputs("label_efficiency", rows, summary)
    plot_label_efficiency(summary, OUT / "label_efficiency.png")
    end_parent()
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
    _check_needs(pretrained=True, params=params)
    specs = [trial_spec("strategies_scratch", params, ("scratch",), strategy="scratch (baseline)")]
    for strategy in params.experiments.strategies:
        trial = params.model_copy(update={"finetune": params.finetune.model_copy(update={"strategy": strategy})})
        specs.append(trial_spec(f"strategy_{strategy}", trial, ("pretrain",), strategy=strategy))
    results, _ = run_trials("strategies", specs, params)
    rows = []
    for spec, res in zip(specs, results):
        init = "scratch" if spec["inits"] == ["scratch"] else "pretrain"
        rows.append({"strategy": spec["log_params"]["strategy"], **_pick(res[init])})
        log.info("%s: %.4f in %.1f s", rows[-1]["strategy"], res[init]["accuracy"], res[init]["train_seconds"])
    write_outputs("compare_strategies", rows, rows)
    end_parent()
    return rows


def objectives(params: Params) -> list[dict]:
    """Pretrain with every objective in params.experiments.objectives, fine-tune each on
    the split's label budget, and compare with the scratch baseline on the same labels."""
    _check_needs(pretrained=False)
    specs = [trial_spec("objectives_scratch", params, ("scratch",), objective="scratch (baseline)")]
    for variant in params.experiments.objectives:
        pre = params.pretrain.model_copy(update={"objective": variant.objective,
                                                 **variant.model_dump(exclude={"objective"}, exclude_none=True)})
        trial = params.model_copy(update={"pretrain": pre})
        name = variant.label()
        specs.append(trial_spec(f"objective_{name}", trial, ("pretrain",), pretrain=True, objective=name,
                                unlabelled="+".join(pre.unlabelled) if pre.objective != "supervised" else "-",
                                pretrain_epochs=pre.epochs))
    results, _ = run_trials("objectives", specs, params)
    scratch = results[0]["scratch"]
    rows = [{"objective": "scratch (baseline)", "pool": "-", "pretrain_epochs": 0, "pretrain_seconds": 0.0,
             "pretrain_val_acc": "", "accuracy": scratch["accuracy"], "macro_f1": scratch["macro_f1"], "gain": 0.0}]
    for spec, res in zip(specs[1:], results[1:]):
        ft = res["pretrain"]
        rows.append({"objective": spec["log_params"]["objective"], "pool": spec["log_params"]["unlabelled"],
                     "pretrain_epochs": res["_pretrain"]["pretrain_epochs"],
                     "pretrain_seconds": res["_pretrain"]["pretrain_seconds"],
                     "pretrain_val_acc": res["_pretrain"]["pretrain_val_acc"],
                     "accuracy": ft["accuracy"], "macro_f1": ft["macro_f1"],
                     "gain": round(ft["accuracy"] - scratch["accuracy"], 4)})
        log.info("%s: %.4f (gain %+.4f)", rows[-1]["objective"], ft["accuracy"], rows[-1]["gain"])
    write_outputs("objectives", rows, rows)
    end_parent()
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



def _trial_main(spec_path: str) -> None:
    """Entry of a trial's own process: `python -m transferline.experiments SPEC.json`."""
    import torch

    from transferline.config import parse_params

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    torch.set_num_threads(int(os.environ.get("TRANSFERLINE_TRIAL_THREADS", "1")))
    spec = read_json(spec_path)
    params = parse_params(spec["params"])
    results = run_trial(spec["name"], params, tuple(spec["inits"]), pretrain=spec["pretrain"])
    write_json(Path(spec_path).with_name("result.json"), results)


if __name__ == "__main__":
    _trial_main(sys.argv[1])
