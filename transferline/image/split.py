"""split (images): deterministic, stratified, seeded train/val/test sets.

The target's label budget (labels per class for training, plus a small
labelled validation set per class) is applied here; the test set is a fixed
share of every class (a folder laid out by split keeps its own: ingest's
`split` array). With `dedupe`, exact duplicate images are dropped first
so no image can sit on both sides of the split. Target images left over
(neither labelled train/val nor test, nor a copy of one) form the unlabelled
pool that self-supervised pretraining may use. Outputs:
`${paths.split}/{source,target,pool}.npz` and reports/split.json.
"""

from __future__ import annotations

import logging

import numpy as np

from transferline.config import Params
from transferline.image.data import assign_pool, assign_source, assign_target, check_pool, image_hashes
from transferline.io import load_arrays, save_arrays, write_json
from transferline.paths import Paths

log = logging.getLogger(__name__)


def run(params: Params, paths: Paths) -> dict:
    cfg, seed = params.image.split, params.seed
    src, tgt = load_arrays(paths.raw / "source.npz"), load_arrays(paths.raw / "target.npz")
    s_train, s_val = assign_source(src["y"], cfg, seed)
    save_arrays(paths.split / "source.npz", x_train=src["x"][s_train], y_train=src["y"][s_train],
                x_val=src["x"][s_val], y_val=src["y"][s_val])
    hashes = image_hashes(tgt["x"])
    t_idx = assign_target(tgt["y"], hashes, cfg, seed, tgt.get("split"))  # a folder's own split, if it gives one
    save_arrays(paths.split / "target.npz",
                **{f"{a}_{k}": tgt[a][i] for k, i in zip(("train", "val", "test"), t_idx) for a in ("x", "y")})
    pool = assign_pool(hashes, *t_idx)
    check_pool(hashes, pool, t_idx[2])
    save_arrays(paths.split / "pool.npz", x_target=tgt["x"][pool])  # no labels
    counts = {
        "source": {"train": len(s_train), "val": len(s_val)},
        "target": {**{k: len(i) for k, i in zip(("train", "val", "test"), t_idx)}, "pool": len(pool)},
        "target_train_per_class": {str(c): int(n) for c, n in zip(*np.unique(tgt["y"][t_idx[0]], return_counts=True))},
        "dropped_duplicates": int(len(hashes) - len(np.unique(hashes))) if cfg.dedupe else 0,
    }
    write_json(paths.report("split"), counts)
    log.info("source train/val %d/%d; target train/val/test %s", len(s_train), len(s_val), counts["target"])
    return counts
