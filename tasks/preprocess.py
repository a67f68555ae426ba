"""preprocess: normalise with train-set statistics and write a compact
tensor cache (safetensors) that training reads in one call.

Outputs data/processed/{source,target}.safetensors (x_* as float16 by
default, y_* as int64), data/processed/pool.safetensors (the unlabelled
target pool, normalised like the target; empty unless pretrain.objective is
self-supervised with `target` in pretrain.unlabelled) and data/processed/meta.json (per set: mean, std,
classes, channels, image_size), which the registered model also uses to
normalise raw images.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tasks._stage import run_main
from transferline.config import Params
from transferline.io import load_arrays, read_json, write_json

log = logging.getLogger(__name__)

SPLIT = Path("data/split")
RAW_META = Path("data/raw/meta.json")
OUT = Path("data/processed")


def normalise_set(
    arrays: dict[str, np.ndarray], dtype: torch.dtype, stats: dict | None = None
) -> tuple[dict[str, torch.Tensor], dict]:
    """Scale to [0, 1], then standardise per channel with the train split's stats (or `stats`)."""
    if stats is None:
        train = torch.from_numpy(arrays["x_train"]).float() / 255
        mean = train.mean(dim=(0, 2, 3))
        std = train.std(dim=(0, 2, 3)).clamp_min(1e-6)
    else:
        mean, std = torch.tensor(stats["mean"]), torch.tensor(stats["std"])
    tensors = {}
    for key, value in arrays.items():
        if key.startswith("x_"):
            x = (torch.from_numpy(value).float() / 255 - mean[:, None, None]) / std[:, None, None]
            tensors[key] = x.to(dtype).contiguous()
        else:
            tensors[key] = torch.from_numpy(value).long().contiguous()
    return tensors, {"mean": mean.tolist(), "std": std.tolist()}


def preprocess(params: Params, split_dir: Path = SPLIT, out: Path = OUT) -> dict:
    dtype = getattr(torch, params.preprocess.dtype)
    raw_meta = read_json(RAW_META)
    meta = {}
    out.mkdir(parents=True, exist_ok=True)
    for name in ("source", "target"):
        tensors, stats = normalise_set(load_arrays(split_dir / f"{name}.npz"), dtype)
        save_file(tensors, str(out / f"{name}.safetensors"))
        meta[name] = {
            **stats,
            "classes": raw_meta[name]["classes"],
            "channels": params.ingest.channels,
            "image_size": params.ingest.image_size,
        }
        log.info("%s: %s", name, {k: tuple(v.shape) for k, v in tensors.items()})
    # unlabelled target images, for self-supervised pretraining: the target's statistics.
    # Kept empty unless pretrain uses them, so new target data leaves pretrain up to date.
    pool, _ = normalise_set(load_arrays(split_dir / "pool.npz"), dtype, stats=meta["target"])
    if params.pretrain.objective == "supervised" or "target" not in params.pretrain.unlabelled:
        pool = {k: v[:0].contiguous() for k, v in pool.items()}
    save_file(pool, str(out / "pool.safetensors"))
    meta["pool"] = {"n_target": len(pool["x_target"])}
    write_json(out / "meta.json", meta)
    return meta


def load_set(name: str, processed: Path = OUT) -> dict[str, torch.Tensor]:
    """The cached tensors of one set ('source', 'target' or 'pool')."""
    return load_file(str(processed / f"{name}.safetensors"))


def main(params: Params) -> None:
    if params.modality == "text":
        from transferline.text import stages

        stages.preprocess(params)
        return
    preprocess(params)


if __name__ == "__main__":
    run_main("preprocess", main)
