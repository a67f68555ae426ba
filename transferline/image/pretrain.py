"""pretrain (images): learn general features on the large source set, and
build the adapted starting points the finetune stage compares.

`pretrain.image.objective` picks how: supervised (source labels), or without
labels on the unlabelled pool (source images and the target images the split
left out of train/val/test): denoising or contrastive
(transferline/image/objectives.py). Either way the backbone lands in
`${paths.models}/pretrain/model.safetensors`, which finetune loads unchanged.

`pretrain.image.adapt.starts` adds self-supervised continued pretraining on
the target pool alone: from that backbone (`pretrain-adapt.safetensors`)
and/or from random weights (`adapt.safetensors`), both in the same folder.

A checkpoint with model, optimizer, scheduler and epoch is written after
every epoch (a DVC `persist` output), so an interrupted run resumes from the
last finished epoch. Also writes reports/pretrain_history.json. Under
torchrun (distributed.nproc_per_node > 1) every rank trains, rank 0 writes.
"""

from __future__ import annotations

import logging

from transferline import distributed as dist
from transferline.checkpoint import read_meta, save_weights
from transferline.config import Params
from transferline.errors import StageError
from transferline.image.data import load_set
from transferline.image.models import build_model
from transferline.image.objectives import pretrain_ssl
from transferline.image.train import fit
from transferline.io import write_json
from transferline.paths import Paths
from transferline.runtime import resolve_device, seed_everything

log = logging.getLogger(__name__)

ADAPTED = {"pretrain": "pretrain-adapt", "scratch": "adapt"}  # start -> the candidate it becomes


def supervised(params: Params, paths: Paths, data: dict) -> list[dict]:
    """Train the classifier on the source labels; write its weights."""
    cfg = params.image.pretrain
    generator = seed_everything(params.seed)
    # from the cache itself: new target data (which changes meta.json) leaves pretrain up to date
    classes = read_meta(paths.cache("source"))["classes"]
    channels = params.image.ingest.channels
    model = build_model(cfg.model, num_classes=len(classes), in_channels=channels)
    history = fit(model, (data["x_train"], data["y_train"]), (data["x_val"], data["y_val"]), cfg,
                  resolve_device(params.device), generator, checkpoint=paths.checkpoint("pretrain"), desc="pretrain")
    if dist.is_main():  # under torchrun every rank holds these weights; one writes them
        save_weights(model, paths.weights("pretrain"),
                     meta={"arch": cfg.model, "num_classes": len(classes), "in_channels": channels})
    log.info("source val accuracy %.4f after %d epochs", history[-1]["val_acc"], len(history))
    return history


def self_supervised(params: Params, paths: Paths, source: dict, pool: dict) -> list[dict]:
    cfg = params.image.pretrain
    parts = {"source": source["x_train"], "target": pool["x_target"]}
    history = pretrain_ssl(cfg, cfg.model, params.image.ingest.channels, {n: parts[n] for n in cfg.unlabelled},
                           source, paths.weights("pretrain"), paths.checkpoint("pretrain"),
                           seed_everything(params.seed), resolve_device(params.device))
    log.info("kNN source val accuracy of the features %.4f after %d epochs", history[-1]["val_acc"], len(history))
    return history


def adapt(params: Params, paths: Paths, start: str, source: dict, pool: dict) -> list[dict]:
    """Continued self-supervised pretraining of `start` on the target pool -> <candidate>.safetensors."""
    cfg, name = params.image.pretrain.adapt, ADAPTED[start]
    init = paths.weights("pretrain") if start == "pretrain" else None
    out = paths.model_dir("pretrain")
    return pretrain_ssl(cfg, params.image.pretrain.model, params.image.ingest.channels,
                        {"target": pool["x_target"]}, source, out / f"{name}.safetensors",
                        out / f"{name}.checkpoint.safetensors", seed_everything(params.seed),
                        resolve_device(params.device), init=init, desc=name)


def run(params: Params, paths: Paths) -> list[dict]:
    cfg = params.image.pretrain
    source = load_set(paths, "source", streamed=("x_train",) if cfg.loader_workers else ())
    pool = load_set(paths, "pool") if cfg.objective != "supervised" or cfg.adapt.starts else None
    try:
        history = supervised(params, paths, source) if pool is None or cfg.objective == "supervised" \
            else self_supervised(params, paths, source, pool)
        adapted = {ADAPTED[s]: adapt(params, paths, s, source, pool) for s in cfg.adapt.starts}
    except ValueError as err:
        raise StageError(str(err)) from None
    if dist.is_main():
        write_json(paths.history("pretrain"), history)
        for name, rows in adapted.items():  # beside the weights: part of the stage's one output folder
            write_json(paths.model_dir("pretrain") / f"{name}_history.json", rows)
    return history
