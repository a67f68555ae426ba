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
from transferline.checkpoint import load_weights, save_weights
from transferline.config import Params
from transferline.io import read_json, write_json
from transferline.models import build_model
from transferline.runtime import resolve_device, seed_everything
from transferline.training import fit

log = logging.getLogger(__name__)

PRETRAINED = Path("models/pretrain/model.safetensors")
META = Path("data/processed/meta.json")
MODELS = Path("models")
REPORTS = Path("reports")


def load_backbone(model: torch.nn.Module, weights: Path) -> list[str]:
    """Copy backbone.* weights into model; return the names that did not fit."""
    if not weights.is_file():
        raise StageError(f"{weights} not found; run the pretrain stage first")
    state = {k: v for k, v in load_weights(weights).items() if k.startswith("backbone.")}
    own = model.state_dict()
    mismatched = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    missing = [k for k in own if k.startswith("backbone.") and k not in state]
    if mismatched or missing:
        raise StageError(f"{weights} does not fit the model: mismatched {mismatched[:5]}, missing {missing[:5]}")
    model.load_state_dict(state, strict=False)
    return mismatched


def train_target(params: Params, init: str, out_dir: Path, history_path: Path) -> list[dict]:
    """Train on the target labels starting from `init`: 'pretrain' or 'scratch'."""
    generator = seed_everything(params.seed)  # same seed, same batches for both runs
    data = load_set("target")
    meta = read_json(META)["target"]
    model = build_model(params.pretrain.model, num_classes=len(meta["classes"]), in_channels=params.ingest.channels)
    if init == "pretrain":
        load_backbone(model, PRETRAINED)
    history = fit(
        model,
        (data["x_train"], data["y_train"]),
        (data["x_val"], data["y_val"]),
        params.finetune,
        resolve_device(params.device),
        generator,
        checkpoint=out_dir / "checkpoint.safetensors",
        desc=f"finetune ({init})",
    )
    arch = {"arch": params.pretrain.model, "num_classes": len(meta["classes"]), "in_channels": params.ingest.channels}
    save_weights(model, out_dir / "model.safetensors", meta={**arch, "init_from": init})
    write_json(history_path, history)
    log.info("%s: val accuracy %.4f", init, history[-1]["val_acc"])
    return history


def finetune(params: Params) -> dict[str, list[dict]]:
    return {
        "finetune": train_target(params, "pretrain", MODELS / "finetune", REPORTS / "finetune_history.json"),
        "scratch": train_target(params, "scratch", MODELS / "scratch", REPORTS / "scratch_history.json"),
    }


def main(params: Params) -> None:
    finetune(params)


if __name__ == "__main__":
    run_main("finetune", main)
