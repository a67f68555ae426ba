"""pretrain: learn general features on the large source set.

`pretrain.objective` picks how: supervised (source labels), or without labels
on the unlabelled pool (source images and the target images the split left
out of train/val/test): denoising or contrastive (transferline.ssl). Either
way the backbone lands in models/pretrain/model.safetensors, which finetune
loads unchanged (`finetune.init_from: pretrain`).

Writes a checkpoint with model, optimizer, scheduler and epoch after every
epoch to models/pretrain/checkpoint.safetensors (a DVC `persist` output), so
an interrupted run resumes from the last finished epoch. Outputs:
models/pretrain/model.safetensors and reports/pretrain_history.json.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tasks._stage import StageError, run_main
from tasks.preprocess import load_set
from transferline.checkpoint import save_weights
from transferline.config import Params
from transferline.io import read_json, write_json
from transferline.models import build_model
from transferline.runtime import resolve_device, seed_everything
from transferline.training import fit

log = logging.getLogger(__name__)

OUT = Path("models/pretrain")
HISTORY = Path("reports/pretrain_history.json")
META = Path("data/processed/meta.json")


def pretrain(params: Params, out: Path = OUT, history_path: Path = HISTORY) -> list[dict]:
    cfg = params.pretrain
    generator = seed_everything(params.seed)
    data = load_set("source")
    if cfg.objective != "supervised":
        from transferline.ssl import pretrain_ssl

        try:
            history = pretrain_ssl(params, data, load_set("pool"), out, generator, resolve_device(params.device))
        except ValueError as err:
            raise StageError(str(err)) from None
        write_json(history_path, history)
        log.info("kNN source val accuracy of the features %.4f after %d epochs", history[-1]["val_acc"], len(history))
        return history
    classes = read_json(META)["source"]["classes"]
    model = build_model(cfg.model, num_classes=len(classes), in_channels=params.ingest.channels)
    history = fit(
        model,
        (data["x_train"], data["y_train"]),
        (data["x_val"], data["y_val"]),
        cfg,
        resolve_device(params.device),
        generator,
        checkpoint=out / "checkpoint.safetensors",
        desc="pretrain",
    )
    meta = {"arch": cfg.model, "num_classes": len(classes), "in_channels": params.ingest.channels}
    save_weights(model, out / "model.safetensors", meta=meta)
    write_json(history_path, history)
    log.info("source val accuracy %.4f after %d epochs", history[-1]["val_acc"], len(history))
    return history


def main(params: Params) -> None:
    if params.modality == "text":
        from transferline.text import stages

        stages.pretrain(params)
        return
    pretrain(params)


if __name__ == "__main__":
    run_main("pretrain", main)
