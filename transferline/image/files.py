"""A user's image folder: which files are images of which class (and split),
and those images read into arrays, as ingest, the pre-flight, init and
`transferline predict` see them.

folder/<class>/<image> (sub-folders of a class are walked), or a folder laid
out by split, folder/<split>/<class>/<image> (GIVEN); hidden files and what
operating systems leave behind are skipped (OS_FILES); a link that loops or
dangles and a name that is not UTF-8 are named as problems, never followed.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import numpy as np

from transferline.errors import StageError
from transferline.image.data import TEST, TRAIN, VAL

# What operating systems leave in a folder of photos, never the user's data: Windows' thumbnail
# caches and folder settings, macOS's resource forks unzipped elsewhere (__MACOSX); hidden files too.
OS_FILES = frozenset({"thumbs.db", "ehthumbs.db", "ehthumbs_vista.db", "desktop.ini", "__macosx"})


def os_file(name: str) -> bool:
    """True for a hidden file or folder, or one an operating system made (OS_FILES): skipped, not data."""
    return name.startswith(".") or name.lower() in OS_FILES


# Data sets often ship split: folder/train/<class>/..., folder/test/<class>/... (torchvision's
# ImageFolder sets, Kaggle's). Read as folder/<class>/, that is a classifier of "train" vs "test".
# Each image keeps its split folder's code (GIVEN), and the split stage honours it.
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
