"""split: deterministic, stratified, seeded train/val/test sets.

The target's label budget (labels per class for training, plus a small
labelled validation set per class) is applied here; the test set is a fixed
share of every class. With `dedupe`, exact duplicate images are dropped first
so no image can sit on both sides of the split. Target images left over
(neither labelled train/val nor test, nor a copy of one) form the unlabelled
pool that self-supervised pretraining may use. Outputs:
data/split/{source,target,pool}.npz and reports/split.json.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from tasks._stage import StageError, run_main
from transferline.config import Params, SplitParams
from transferline.io import load_arrays, save_arrays, write_json

log = logging.getLogger(__name__)

RAW = Path("data/raw")
OUT = Path("data/split")
REPORT = Path("reports/split.json")


def image_hashes(x: np.ndarray) -> np.ndarray:
    """One content hash per image (exact-duplicate detection)."""
    return np.array([hashlib.blake2b(img.tobytes(), digest_size=16).hexdigest() for img in x])


def assign_target(
    y: np.ndarray, hashes: np.ndarray, cfg: SplitParams, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices (train, val, test): per class, a seeded shuffle cut into test,
    then val_per_class, then labels_per_class (fewer if the class runs out)."""
    keep = np.arange(len(y))
    if cfg.dedupe:
        _, first = np.unique(hashes, return_index=True)
        keep = np.sort(first)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in np.unique(y):
        idx = rng.permutation(keep[y[keep] == c])
        n_test = int(round(cfg.test_fraction * len(idx)))
        n_val = cfg.val_per_class
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test : n_test + n_val])
        parts["train"].append(idx[n_test + n_val : n_test + n_val + cfg.labels_per_class])
    return tuple(np.sort(np.concatenate(parts[k])) for k in ("train", "val", "test"))  # type: ignore[return-value]


def assign_pool(hashes: np.ndarray, train: np.ndarray, val: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Indices of the unlabelled target pool: one copy of every image whose
    content is in none of train, val and test (so a duplicate of a test image
    never reaches pretraining)."""
    taken = set(hashes[np.concatenate([train, val, test])])
    _, first = np.unique(hashes, return_index=True)
    return np.sort(np.array([i for i in first if hashes[i] not in taken], dtype=np.int64))


def check_pool(hashes: np.ndarray, pool: np.ndarray, test: np.ndarray) -> None:
    """Refuse a pool that shares an image with the test set."""
    shared = len(set(hashes[pool]) & set(hashes[test]))
    if shared:
        raise StageError(f"the unlabelled pool holds {shared} test image(s); the split is broken, report this bug")


def assign_source(y: np.ndarray, cfg: SplitParams, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) of a stratified sample of at most source_max_samples."""
    idx = np.arange(len(y))
    if len(idx) > cfg.source_max_samples:
        idx, _ = train_test_split(idx, train_size=cfg.source_max_samples, stratify=y, random_state=seed)
    train, val = train_test_split(idx, test_size=cfg.source_val_fraction, stratify=y[idx], random_state=seed)
    return np.sort(train), np.sort(val)


def split(cfg: SplitParams, seed: int, raw: Path = RAW, out: Path = OUT, report: Path = REPORT) -> dict:
    src, tgt = load_arrays(raw / "source.npz"), load_arrays(raw / "target.npz")
    s_train, s_val = assign_source(src["y"], cfg, seed)
    save_arrays(out / "source.npz", x_train=src["x"][s_train], y_train=src["y"][s_train],
                x_val=src["x"][s_val], y_val=src["y"][s_val])
    hashes = image_hashes(tgt["x"])
    t_idx = assign_target(tgt["y"], hashes, cfg, seed)
    save_arrays(out / "target.npz", **{f"{a}_{k}": tgt[a][i] for k, i in zip(("train", "val", "test"), t_idx) for a in ("x", "y")})
    pool = assign_pool(hashes, *t_idx)
    check_pool(hashes, pool, t_idx[2])
    save_arrays(out / "pool.npz", x_target=tgt["x"][pool])  # no labels
    counts = {
        "source": {"train": len(s_train), "val": len(s_val)},
        "target": {**{k: len(i) for k, i in zip(("train", "val", "test"), t_idx)}, "pool": len(pool)},
        "target_train_per_class": {str(c): int(n) for c, n in zip(*np.unique(tgt["y"][t_idx[0]], return_counts=True))},
        "dropped_duplicates": int(len(hashes) - len(np.unique(hashes))) if cfg.dedupe else 0,
    }
    write_json(report, counts)
    log.info("source train/val %d/%d; target train/val/test %s", len(s_train), len(s_val), counts["target"])
    return counts


def main(params: Params) -> None:
    if params.modality == "text":
        from transferline.text import stages

        stages.split(params)
        return
    split(params.split, params.seed)


if __name__ == "__main__":
    run_main("split", main)
