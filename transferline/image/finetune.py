"""finetune (images): carry the pretrained backbone to the target task,
replace the head, train on the label budget; and train the same architecture
from scratch on the same labels, the baseline every run is measured against.

Outputs `${paths.models}/{finetune,scratch}/model.safetensors` and
reports/{finetune,scratch}_history.json (rank 0 only, under torchrun).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from transferline import distributed as dist
from transferline.checkpoint import save_weights
from transferline.config import Params
from transferline.errors import StageError
from transferline.image.data import load_set, processed_meta
from transferline.image.models import build_model
from transferline.image.train import fit
from transferline.image.weights import load_pretrained
from transferline.io import write_json
from transferline.paths import Paths
from transferline.runtime import resolve_device, seed_everything

log = logging.getLogger(__name__)


def initialise(model: torch.nn.Module, init_from: str, pretrained: Path) -> dict:
    """Load backbone weights per finetune.image.init_from; report what loaded and what did not."""
    if init_from == "scratch":
        return {"init_from": "scratch"}
    path = pretrained if init_from == "pretrain" else Path(init_from)
    if not path.is_file():
        raise StageError(f"{path} not found; run the pretrain stage first or fix finetune.image.init_from")
    try:
        report = load_pretrained(model, path)
    except ValueError as err:
        raise StageError(f"finetune.image.init_from: {err}") from None
    return {"init_from": str(path), **{k: len(v) for k, v in report.items()}}


def train_target(params: Params, paths: Paths, init: str, name: str) -> list[dict]:
    """Train on the target labels from `init` ('pretrain', 'scratch' or a weights file) into models/<name>."""
    v = params.image
    generator = seed_everything(params.seed)  # same seed, same batches for both runs
    data = load_set(paths, "target")
    classes = processed_meta(paths)["classes"]
    arch = {"arch": v.pretrain.model, "num_classes": len(classes), "in_channels": v.ingest.channels}
    model = build_model(v.pretrain.model, num_classes=len(classes), in_channels=v.ingest.channels)
    report = initialise(model, init, paths.weights("pretrain"))
    # The baseline trains everything: a frozen random backbone measures nothing.
    cfg = v.finetune if init != "scratch" else v.finetune.model_copy(update={"strategy": "full"})
    history = fit(
        model,
        (data["x_train"], data["y_train"]),
        (data["x_val"], data["y_val"]),
        cfg,
        resolve_device(params.device),
        generator,
        checkpoint=paths.checkpoint(name),
        desc=f"finetune ({init})",
    )
    if dist.is_main():  # under torchrun every rank holds these weights; one writes them
        save_weights(model, paths.weights(name), meta={**arch, **report, "strategy": cfg.strategy})
        write_json(paths.history(name), history)
    log.info("%s: best val accuracy %.4f", init, max(r["val_acc"] for r in history))
    return history


def run(params: Params, paths: Paths) -> dict[str, list[dict]]:
    return {
        "finetune": train_target(params, paths, params.image.finetune.init_from, "finetune"),
        "scratch": train_target(params, paths, "scratch", "scratch"),
    }
