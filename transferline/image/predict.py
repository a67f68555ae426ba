"""predict (images): the files given to `transferline predict`, read the way ingest reads a
folder (transferline.image.files.read_image: the same decode, resize and channels), at the size
and channels of the model that will label them, so a photo is labelled as it would have trained."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from transferline.config import Params
from transferline.config.image import IngestParams
from transferline.image.data import served_layout
from transferline.image.files import os_file, read_images


def files_under(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """(each file given and every file under each folder given, in order; 'path: why' for a path
    that is neither). Hidden files and what operating systems leave behind are skipped."""
    found, problems = [], []
    for path in paths:
        if path.is_dir():
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not os_file(d))
                found += [Path(root) / n for n in sorted(names) if not os_file(n)]
        elif path.is_file():
            found.append(path)
        else:
            problems.append(f"{path}: no such file or folder")
    return found, problems


def model_inputs(paths: list[Path], params: Params | None, model: Any) -> tuple[list[str], np.ndarray, list[str]]:
    """(names, uint8 images at the model's size and channels in its layout, 'name: why' for each path
    that is not a readable image). `model` is the served ImageClassifier; `params` gives the pixel
    limit (ingest.image.max_pixels; its default where the project is a text one)."""
    files, problems = files_under(paths)
    ingest = params.image.ingest if params is not None and params.image is not None else IngestParams()
    x, kept, failed = read_images(files, model.size, model.channels, ingest.max_pixels)
    problems += [f"{file}: not an image Pillow can read ({type(err).__name__}: {str(err)[:200]})" for file, err in failed]
    return [str(files[i]) for i in kept], served_layout(x), problems
