"""preprocess (images): normalise with train-set statistics and write the
tensor cache (transferline.image.data) that training reads in one call.

Outputs `${paths.processed}/{source,target}.safetensors`, `pool.safetensors`
(the unlabelled target pool, normalised like the target; empty unless
pretrain.image.objective is self-supervised with `target` in
pretrain.image.unlabelled, or pretrain.image.adapt has starts) and meta.json (per set: mean, std, classes,
channels, image_size), which the registered model also uses to normalise
raw images.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from transferline.config import Params
from transferline.image.data import save_set
from transferline.io import load_arrays, read_json, write_json
from transferline.paths import Paths

log = logging.getLogger(__name__)


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


def run(params: Params, paths: Paths) -> dict:
    v = params.image
    dtype = getattr(torch, v.preprocess.dtype)
    raw_meta = read_json(paths.raw_meta)
    meta = {}
    for name in ("source", "target"):
        tensors, stats = normalise_set(load_arrays(paths.split / f"{name}.npz"), dtype)
        meta[name] = {
            **stats,
            "classes": raw_meta[name]["classes"],
            "channels": v.ingest.channels,
            "image_size": v.ingest.image_size,
        }
        save_set(paths, name, tensors, meta[name])
        log.info("%s: %s", name, {k: tuple(t.shape) for k, t in tensors.items()})
    # unlabelled target images, for self-supervised pretraining: the target's statistics.
    # Kept empty unless pretrain uses them, so new target data leaves pretrain up to date.
    pool, _ = normalise_set(load_arrays(paths.split / "pool.npz"), dtype, stats=meta["target"])
    reads_pool = (v.pretrain.objective != "supervised" and "target" in v.pretrain.unlabelled) or v.pretrain.adapt.starts
    if not reads_pool:
        pool = {k: t[:0].contiguous() for k, t in pool.items()}
    save_set(paths, "pool", pool)
    meta["pool"] = {"n_target": len(pool["x_target"])}
    write_json(paths.processed_meta, meta)
    return meta


