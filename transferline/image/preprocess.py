"""preprocess (images): normalise with train-set statistics and write the
tensor cache (transferline.image.data) that training reads in one call.

Outputs `${paths.processed}/{source,target}.safetensors`, `pool.safetensors`
(the unlabelled target pool, normalised like the target; empty unless
pretrain.image.objective is self-supervised with `target` in
pretrain.image.unlabelled, or pretrain.image.adapt has starts) and meta.json (per set: mean, std, classes,
channels, image_size), which the registered model also uses to normalise
raw images.

numpy does the arithmetic: the stage never imports torch (about 3 s of a 6 s stage here),
and safetensors writes the same file format training reads with torch.
"""

from __future__ import annotations

import logging

import numpy as np

from transferline.config import Params
from transferline.image.data import save_set
from transferline.io import load_arrays, read_json, write_json
from transferline.paths import Paths

log = logging.getLogger(__name__)


def normalise_set(
    arrays: dict[str, np.ndarray], dtype: str, stats: dict | None = None
) -> tuple[dict[str, np.ndarray], dict]:
    """Scale to [0, 1], then standardise per channel with the train split's stats (or `stats`);
    images as `dtype`, labels as int64 (what training's cross-entropy takes)."""
    if stats is None:
        train = arrays["x_train"].astype(np.float32) / np.float32(255)
        # summed in float64: the correctly rounded statistics (torch's float32 sums, used before,
        # could differ in the last bit; on the default data they agree, so its cache is unchanged)
        mean = train.mean(axis=(0, 2, 3), dtype=np.float64).astype(np.float32)
        std = np.maximum(train.std(axis=(0, 2, 3), ddof=1, dtype=np.float64), 1e-6).astype(np.float32)
    else:
        mean, std = np.asarray(stats["mean"], np.float32), np.asarray(stats["std"], np.float32)
    out = {}
    for key, value in arrays.items():
        if key.startswith("x_"):
            x = (value.astype(np.float32) / np.float32(255) - mean[:, None, None]) / std[:, None, None]
            out[key] = x.astype(dtype)
        else:
            out[key] = value.astype(np.int64)
    return out, {"mean": mean.tolist(), "std": std.tolist()}


def run(params: Params, paths: Paths) -> dict:
    v = params.image
    dtype = v.preprocess.dtype
    raw_meta = read_json(paths.raw_meta)
    meta = {}
    for name in ("source", "target"):
        arrays, stats = normalise_set(load_arrays(paths.split / f"{name}.npz"), dtype)
        meta[name] = {
            **stats,
            "classes": raw_meta[name]["classes"],
            "channels": v.ingest.channels,
            "image_size": v.ingest.image_size,
        }
        save_set(paths, name, arrays, meta[name])
        log.info("%s: %s", name, {k: a.shape for k, a in arrays.items()})
    # unlabelled target images, for self-supervised pretraining: the target's statistics.
    # Kept empty unless pretrain uses them, so new target data leaves pretrain up to date.
    pool, _ = normalise_set(load_arrays(paths.split / "pool.npz"), dtype, stats=meta["target"])
    reads_pool = (v.pretrain.objective != "supervised" and "target" in v.pretrain.unlabelled) or v.pretrain.adapt.starts
    if not reads_pool:
        pool = {k: t[:0] for k, t in pool.items()}
    save_set(paths, "pool", pool)
    meta["pool"] = {"n_target": len(pool["x_target"])}
    write_json(paths.processed_meta, meta)
    return meta


