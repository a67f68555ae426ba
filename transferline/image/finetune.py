"""finetune (images): fine-tune one model per candidate starting point
(`finetune.image.candidates`: scratch, this project's pretraining, its
self-supervised adaptations to the target pool, weights files), score each on
the validation split, and keep the best (transferline/candidates.py): scratch
unless a transferred start beats it. Before training, every start's frozen
features are scored on the labelled train split with LogME
(transferline/transferability.py); with `candidates_max` only the best few
transferred starts are fine-tuned.

Outputs `${paths.models}/finetune/model.safetensors` (the winner),
`${paths.models}/scratch/` (the baseline, always trained),
`${paths.models}/candidates/<start>/` and reports/candidates.json, plus each
model's reports/*_history.json (rank 0 only, under torchrun).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from transferline import distributed as dist
from transferline.candidates import SCRATCH, compare, folder_name
from transferline.checkpoint import save_weights
from transferline.config import Params
from transferline.errors import StageError
from transferline.image.data import load_set, processed_meta
from transferline.image.models import build_model, predict
from transferline.image.train import fit, loss_and_accuracy
from transferline.image.weights import load_pretrained
from transferline.io import write_json
from transferline.paths import Paths
from transferline.runtime import resolve_device, seed_everything
from transferline.transferability import logme

log = logging.getLogger(__name__)


def start_weights(candidate: str, paths: Paths) -> Path | None:
    """The weights file a candidate starts from (None: random weights)."""
    if candidate == SCRATCH:
        return None
    if candidate == "pretrain":
        return paths.weights("pretrain")
    if candidate in ("pretrain-adapt", "adapt"):  # built by the pretrain stage (pretrain.image.adapt)
        return paths.model_dir("pretrain") / f"{candidate}.safetensors"
    return Path(candidate)


def initialised_model(params: Params, candidate: str, paths: Paths, num_classes: int) -> tuple[torch.nn.Module, dict]:
    """The target architecture with the candidate's backbone loaded; what loaded, for the model's metadata."""
    v = params.image
    model = build_model(v.pretrain.model, num_classes=num_classes, in_channels=v.ingest.channels)
    path = start_weights(candidate, paths)
    if path is None:
        return model, {"init_from": SCRATCH}
    if not path.is_file():
        raise StageError(f"{path} not found; run the pretrain stage first or fix finetune.image.candidates")
    try:
        report = load_pretrained(model, path)
    except ValueError as err:
        raise StageError(f"finetune.image.candidates ({candidate}): {err}") from None
    return model, {"init_from": candidate, **{k: len(v) for k, v in report.items()}}


def estimate(params: Params, candidate: str, paths: Paths, data: dict, num_classes: int) -> float:
    """LogME of the candidate's frozen features on the labelled train split (seconds, no training)."""
    seed_everything(params.seed)  # scratch's random features: the same draw each run
    model, _ = initialised_model(params, candidate, paths, num_classes)
    feats = predict(model.backbone, data["x_train"], params.image.evaluate.batch_size, resolve_device(params.device))
    return round(logme(feats.double().numpy(), data["y_train"].numpy()), 5)


def train_target(params: Params, paths: Paths, candidate: str, name: str) -> tuple[torch.nn.Module, list[dict]]:
    """Train on the target labels from `candidate` into models/<name>; (model, history)."""
    v = params.image
    generator = seed_everything(params.seed)  # same seed, same batches for every candidate
    data = load_set(paths, "target", streamed=("x_train",) if v.finetune.loader_workers else ())
    classes = processed_meta(paths)["classes"]
    model, report = initialised_model(params, candidate, paths, len(classes))
    # The baseline trains everything: a frozen random backbone measures nothing.
    cfg = v.finetune if candidate != SCRATCH else v.finetune.model_copy(update={"strategy": "full"})
    history = fit(model, (data["x_train"], data["y_train"]), (data["x_val"], data["y_val"]), cfg,
                  resolve_device(params.device), generator, checkpoint=paths.checkpoint(name),
                  desc=f"finetune ({candidate})")
    if dist.is_main():  # under torchrun every rank holds these weights; one writes them
        arch = {"arch": v.pretrain.model, "num_classes": len(classes), "in_channels": v.ingest.channels}
        save_weights(model, paths.weights(name), meta={**arch, **report, "strategy": cfg.strategy})
        write_json(paths.history(name), history)
    return model, history


def run(params: Params, paths: Paths) -> dict:
    """Every candidate estimated, the shortlist fine-tuned and scored on validation, the winner kept."""
    cfg = params.image.finetune
    data = load_set(paths, "target", streamed=("x_train",) if cfg.loader_workers else ())
    classes = processed_meta(paths)["classes"]
    device = resolve_device(params.device)
    estimates = {c: estimate(params, c, paths, data, len(classes)) for c in cfg.candidates}

    def fine_tune(candidate: str) -> dict:
        model, history = train_target(params, paths, candidate, folder_name(candidate))
        # the saved (final or, with patience, best) weights, not the history's best epoch
        val_loss, val_acc = loss_and_accuracy(model, data["x_val"], data["y_val"], params.image.evaluate.batch_size,
                                              device)
        log.info("candidate %s: LogME %.3f, val accuracy %.4f", candidate, estimates[candidate], val_acc)
        return {"val_acc": round(val_acc, 5), "val_loss": round(val_loss, 5), "epochs": len(history)}

    return compare(paths, estimates, cfg.candidates_max, cfg.min_val_gain, fine_tune, write=dist.is_main())
