"""Pre-flight for images: the target folder and a weights file, checked in seconds
before any stage runs (`transferline run` calls `check`). Image headers and the last bytes of
JPEG and PNG files only: nothing else is decoded, so a folder of thousands of images takes about
a second."""

from __future__ import annotations

import warnings
from pathlib import Path

from transferline.config import Params
from transferline.config.image import BUILT_STARTS, SplitParams
from transferline.errors import StageError
from transferline.image import data
from transferline.image.files import GIVEN, folder_files, split_folders
from transferline.image.validate import budget_problem, empty_side, fitting_budget

SHOWN = 10  # problems of one kind listed before "and N more"
# How a complete file ends: a JPEG with its end-of-image marker, a PNG with its IEND chunk.
ENDINGS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}


def cut_short(img, file: Path) -> bool:
    """Whether an opened JPEG or PNG stops before its end (a copy or download cut off), which its
    header does not show. A file that ends otherwise (a phone's motion photo carries a video
    after its JPEG) is decoded whole to tell; every other file costs one small read."""
    ending = ENDINGS.get(img.format)
    if ending is None:
        return False
    with open(file, "rb") as f:
        f.seek(max(f.seek(0, 2) - len(ending), 0))
        if f.read() == ending:
            return False
    try:
        img.load()
    except OSError:
        return True
    return False


def folder_problems(folder: Path, max_pixels: int, min_per_class: int, split: SplitParams) -> list[str]:
    """A class sub-folder per class, enough readable images in each (for the minimum and for the
    split's label budget), no loops or bad names."""
    from PIL import Image

    try:
        classes, per_class, problems = folder_files(folder)
    except StageError as err:
        return [str(err)]
    problems = [f"{folder}/{p}" for p in problems]
    unreadable: list[str] = []
    counts = []
    Image.MAX_IMAGE_PIXELS = max_pixels
    for files in per_class:
        ok = 0
        for file in files:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    with Image.open(file) as img:  # reads the header only
                        if img.width * img.height > max_pixels:
                            raise ValueError(f"{img.width}x{img.height} pixels")
                        if cut_short(img, file):
                            unreadable.append(f"{file.relative_to(folder)} stops before the image's end (a copy "
                                              "or download cut off?); copy it again or remove it")
                            continue
                ok += 1
            except (Image.DecompressionBombError, ValueError) as err:
                unreadable.append(f"{file.relative_to(folder)} is too large ({err}; ingest.image.max_pixels="
                                  f"{max_pixels}): shrink it or raise the limit")
            except (OSError, SyntaxError) as err:
                unreadable.append(f"{file.relative_to(folder)} is not an image Pillow can read "
                                  f"({type(err).__name__}); convert or remove it")
        counts.append(ok)
    problems += [f"{folder}/{u}" for u in unreadable[:SHOWN]]
    if len(unreadable) > SHOWN:
        problems.append(f"{folder}: and {len(unreadable) - SHOWN} more unreadable file(s)")
    if len(classes) < 2:
        problems.append(f"ingest.image.folder: {folder} has {len(classes)} class sub-folder(s); a classifier "
                        "needs at least 2")
    small = [f"{c} ({n})" for c, n in zip(classes, counts) if n < min_per_class]
    if small:
        problems.append(f"ingest.image.folder: classes with fewer than validate.image.min_per_class="
                        f"{min_per_class} readable images: {', '.join(small)}; add images or lower the minimum")
    elif (splits := split_folders(folder)) and len(classes) >= 2:  # its own split: each side needs each class
        problems += missing_sides(folder, classes, per_class, {GIVEN[s.lower()] for s in splits})
    elif len(classes) >= 2 and (budget := budget_problem(min(counts), split)):
        problems.append(budget)
    return problems


def missing_sides(folder: Path, classes: list[str], per_class: list[list[Path]], given: set[int]) -> list[str]:
    """Classes a folder laid out by split leaves without training images, or without validation or
    test images where it has such folders (else those are cut from the training images)."""
    present = [{GIVEN[f.relative_to(folder).parts[0].lower()] for f in files} for files in per_class]
    return [empty_side(name, side) for side in sorted(given | {data.TRAIN}) for name, has in zip(classes, present)
            if side not in has]


def fitted_split(params: Params, root: Path) -> dict[str, int]:
    """The split values (dotted keys) that fit the folder under `root` where params' do not, for
    `transferline init`: {} when they fit or the folder cannot tell (the pre-flight then says why)."""
    try:
        _, per_class, _ = folder_files(root / params.image.ingest.folder)
    except StageError:
        return {}
    if len(per_class) < 2 or split_folders(root / params.image.ingest.folder):  # its own split decides
        return {}
    fit = fitting_budget(min(map(len, per_class)), params.image.split)
    return {f"split.image.{key}": value for key, value in fit.items()}


def weights_problems(path: Path) -> list[str]:
    """The file holds tensors only (safetensors, or a state dict torch reads with weights_only=True)."""
    from transferline.image.weights import read_state_dict  # torch: only when a file is named

    try:
        tensors = read_state_dict(path)
    except ValueError as err:
        return [f"finetune.image.candidates: {err}"]
    if not tensors:
        return [f"finetune.image.candidates: {path} holds no tensors"]
    return []


def check(params: Params) -> list[str]:
    """Every problem with the image data and weights this run would read."""
    v = params.image
    problems = []
    if v.ingest.target == "folder":
        problems += folder_problems(Path(v.ingest.folder), v.ingest.max_pixels, v.validate_.min_per_class, v.split)
    for candidate in v.finetune.candidates:
        if candidate not in BUILT_STARTS:  # a weights file the user named
            problems += weights_problems(Path(candidate))
    return problems
