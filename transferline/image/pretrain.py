"""pretrain (images): learn general features on the large source set.

`pretrain.image.objective` picks how: supervised (source labels), or without
labels on the unlabelled pool (source images and the target images the split
left out of train/val/test): denoising or contrastive
(transferline/image/objectives.py). Either way the backbone lands in
`${paths.models}/pretrain/model.safetensors`, which finetune loads unchanged.

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


def run(params: Params, paths: Paths) -> list[dict]:
    cfg = params.image.pretrain
    generator = seed_everything(params.seed)
    data = load_set(paths, "source")
    out = paths.model_dir("pretrain")
    if cfg.objective != "supervised":
        try:
            history = pretrain_ssl(params, data, load_set(paths, "pool"), out, generator, resolve_device(params.device))
        except ValueError as err:
            raise StageError(str(err)) from None
        if dist.is_main():
            write_json(paths.history("pretrain"), history)
        log.info("kNN source val accuracy of the features %.4f after %d epochs", history[-1]["val_acc"], len(history))
        return history
    # from the cache itself: new target data (which changes meta.json) leaves pretrain up to date
    classes = read_meta(paths.cache("source"))["classes"]
    channels = params.image.ingest.channels
    model = build_model(cfg.model, num_classes=len(classes), in_channels=channels)
    history = fit(
        model,
        (data["x_train"], data["y_train"]),
        (data["x_val"], data["y_val"]),
        cfg,
        resolve_device(params.device),
        generator,
        checkpoint=paths.checkpoint("pretrain"),
        desc="pretrain",
    )
    meta = {"arch": cfg.model, "num_classes": len(classes), "in_channels": channels}
    if dist.is_main():  # under torchrun every rank holds these weights; one writes them
        save_weights(model, paths.weights("pretrain"), meta=meta)
        write_json(paths.history("pretrain"), history)
    log.info("source val accuracy %.4f after %d epochs", history[-1]["val_acc"], len(history))
    return history
