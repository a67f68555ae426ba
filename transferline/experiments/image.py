"""Image experiments on the pipeline's ingested data (and, unless a trial
pretrains itself, its pretrained backbone): the fine-tuning strategy table
and the pretraining-objective comparison (label efficiency and
transferability: transferline/experiments/starts.py)."""

from __future__ import annotations

import logging
import time


from transferline.config import Params
from transferline.experiments import ExperimentError, trial_paths, write_outputs
from transferline.experiments.trials import end_parent, run_trials, trial_spec

log = logging.getLogger(__name__)

MODULE = __name__


def run_trial(name: str, params: Params, inits: tuple[str, ...], pretrain: bool = False) -> dict[str, dict]:
    """Split, preprocess, [pretrain,] train one model per init, evaluate; {init: metrics + seconds}.

    With `pretrain`, the trial pretrains its own backbone (params.image.pretrain)
    into its own models/pretrain instead of using the pipeline's."""
    from transferline.image import preprocess, split
    from transferline.image import pretrain as pretrain_stage
    from transferline.image.data import load_set
    from transferline.image.evaluate import predict_classes
    from transferline.image.finetune import train_target
    from transferline.image.models import load_classifier
    from transferline.metrics import classification_scores
    from transferline.runtime import resolve_device

    paths = trial_paths(params.paths, name)
    trial = params.model_copy(update={"paths": paths})
    split.run(trial, paths)
    preprocess.run(trial, paths)
    data = load_set(paths, "target")
    device = resolve_device(params.device)
    results: dict[str, dict] = {}
    if pretrain:
        t0 = time.perf_counter()
        history = pretrain_stage.run(trial, paths)
        results["_pretrain"] = {"pretrain_seconds": round(time.perf_counter() - t0, 1),
                                "pretrain_epochs": len(history), "pretrain_val_acc": history[-1]["val_acc"]}
    for init in inits:
        out = "scratch" if init == "scratch" else "finetune"
        # the pipeline's backbone, read where the pipeline wrote it, unless the trial pretrained its own
        source = str(params.paths.weights("pretrain")) if init == "pretrain" and not pretrain else init
        t0 = time.perf_counter()
        _, history = train_target(trial, paths, source, out)
        seconds = time.perf_counter() - t0
        predicted = predict_classes(load_classifier(paths.weights(out)), data["x_test"],
                                    params.image.evaluate.batch_size, device)
        results[init] = {**classification_scores(data["y_test"].numpy(), predicted),
                         "train_seconds": round(seconds, 1), "epochs_run": len(history)}
    return results


def _check_needs(params: Params, pretrained: bool) -> None:
    """Fail before Prefect and MLflow start when the pipeline's inputs are missing."""
    if pretrained and params.image.pretrain.objective != "supervised" \
            and "target" in params.image.pretrain.unlabelled:
        log.warning("the pipeline's backbone was pretrained (unlabelled) on the target pool of the seed-%d split; "
                    "trials with another seed or label budget may test on images it has seen without labels",
                    params.seed)
    needed = (params.paths.raw, params.paths.weights("pretrain")) if pretrained else (params.paths.raw,)
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        until = "pretrain" if pretrained else "ingest"
        raise ExperimentError(f"{', '.join(missing)} not found; run `transferline run --until {until}` first")


def compare_strategies(params: Params) -> list[dict]:
    """Test accuracy and train time of every strategy in params.experiments, one seed."""
    _check_needs(params, pretrained=True)
    specs = [trial_spec(MODULE, "strategies_scratch", params, ("scratch",), strategy="scratch (baseline)")]
    for strategy in params.image.experiments.strategies:
        trial = params.model_copy(update={"image": params.image.model_copy(update={
            "finetune": params.image.finetune.model_copy(update={"strategy": strategy})})})
        specs.append(trial_spec(MODULE, f"strategy_{strategy}", trial, ("pretrain",), strategy=strategy))
    results, _ = run_trials("strategies", specs, params)
    rows = []
    for spec, res in zip(specs, results):
        init = "scratch" if spec["inits"] == ["scratch"] else "pretrain"
        rows.append({"strategy": spec["log_params"]["strategy"], **_pick(res[init])})
        log.info("%s: %.4f in %.1f s", rows[-1]["strategy"], res[init]["accuracy"], res[init]["train_seconds"])
    write_outputs("compare_strategies", rows, rows, params.paths.experiments)
    end_parent(params.paths.experiments)
    return rows


def objectives(params: Params) -> list[dict]:
    """Pretrain with every objective in params.experiments.objectives, fine-tune each on
    the split's label budget, and compare with the scratch baseline on the same labels."""
    _check_needs(params, pretrained=False)
    specs = [trial_spec(MODULE, "objectives_scratch", params, ("scratch",), objective="scratch (baseline)")]
    for variant in params.image.experiments.objectives:
        pre = params.image.pretrain.model_copy(update={"objective": variant.objective,
                                                 **variant.model_dump(exclude={"objective"}, exclude_none=True)})
        trial = params.model_copy(update={"image": params.image.model_copy(update={"pretrain": pre})})
        name = variant.label()
        specs.append(trial_spec(MODULE, f"objective_{name}", trial, ("pretrain",), pretrain=True, objective=name,
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
    write_outputs("objectives", rows, rows, params.paths.experiments)
    end_parent(params.paths.experiments)
    return rows


def _pick(res: dict) -> dict:
    return {k: res[k] for k in ("accuracy", "macro_f1", "train_seconds", "epochs_run")}
