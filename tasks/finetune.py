"""finetune: carry the pretrained backbone to the target task, replace the
head, train on the label budget; and train the same architecture from
scratch on the same labels, the baseline every run is measured against.

Outputs models/{finetune,scratch}/model.safetensors and
reports/{finetune,scratch}_history.json.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from tasks._stage import StageError, run_main
from tasks.preprocess import load_set
from transferline.checkpoint import save_weights
from transferline.config import Params
from transferline.io import read_json, write_json
from transferline.models import build_model
from transferline.runtime import resolve_device, seed_everything
from transferline.training import fit
from transferline.weights import load_pretrained

log = logging.getLogger(__name__)

PRETRAINED = Path("models/pretrain/model.safetensors")
META = Path("data/processed/meta.json")
MODELS = Path("models")
REPORTS = Path("reports")


def initialise(model: torch.nn.Module, init_from: str) -> dict:
    """Load backbone weights per finetune.init_from; report what loaded and what did not."""
    if init_from == "scratch":
        return {"init_from": "scratch"}
    path = PRETRAINED if init_from == "pretrain" else Path(init_from)
    if not path.is_file():
        raise StageError(f"{path} not found; run the pretrain stage first or fix finetune.init_from")
    try:
        report = load_pretrained(model, path)
    except ValueError as err:
        raise StageError(f"finetune.init_from: {err}") from None
    return {"init_from": str(path), **{k: len(v) for k, v in report.items()}}


def train_target(params: Params, init: str, out_dir: Path, history_path: Path) -> list[dict]:
    """Train on the target labels from `init` ('pretrain', 'scratch' or a weights file)."""
    generator = seed_everything(params.seed)  # same seed, same batches for both runs
    data = load_set("target")
    meta = read_json(META)["target"]
    model = build_model(params.pretrain.model, num_classes=len(meta["classes"]), in_channels=params.ingest.channels)
    report = initialise(model, init)
    # The baseline trains everything: a frozen random backbone measures nothing.
    cfg = params.finetune if init != "scratch" else params.finetune.model_copy(update={"strategy": "full"})
    history = fit(
        model,
        (data["x_train"], data["y_train"]),
        (data["x_val"], data["y_val"]),
        cfg,
        resolve_device(params.device),
        generator,
        checkpoint=out_dir / "checkpoint.safetensors",
        desc=f"finetune ({init})",
    )
    arch = {"arch": params.pretrain.model, "num_classes": len(meta["classes"]), "in_channels": params.ingest.channels}
    save_weights(model, out_dir / "model.safetensors", meta={**arch, **report, "strategy": cfg.strategy})
    write_json(history_path, history)
    log.info("%s: best val accuracy %.4f", init, max(r["val_acc"] for r in history))
    return history


def finetune(params: Params) -> dict[str, list[dict]]:
    return {
        "finetune": train_target(params, params.finetune.init_from, MODELS / "finetune",
                                 REPORTS / "finetune_history.json"),
        "scratch": train_target(params, "scratch", MODELS / "scratch", REPORTS / "scratch_history.json"),
    }


def main(params: Params) -> None:
    if params.modality == "text":
        from transferline.text import stages

        stages.finetune(params)
        return
    finetune(params)


if __name__ == "__main__":
    run_main("finetune", main)
