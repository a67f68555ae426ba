"""Benchmark: reading a folder of photos (the ingest of `ingest.image.target: folder`).

Writes N smooth JPEG photos (default 80 of 3000x2000, two classes) to a throw-away
folder, then times `transferline.image.files.load_folder` as shipped (a JPEG decodes
at a reduced scale, Pillow's draft) against the same call decoding every pixel
(draft switched off for the run), alternately, REPEAT times each, in one process.
Reports images per second for each, their ratio and how far the pixels are apart.
Writes bench/results/folder_ingest.json.

    uv run python bench/folder_ingest.py [--images 80] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@contextlib.contextmanager
def full_decode():
    """The baseline: every JPEG decoded whole, as before the draft."""
    from PIL import JpegImagePlugin

    draft = JpegImagePlugin.JpegImageFile.draft
    JpegImagePlugin.JpegImageFile.draft = lambda self, mode, size: None
    try:
        yield
    finally:
        JpegImagePlugin.JpegImageFile.draft = draft


def write_photos(folder: Path, n: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        (folder / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        smooth = Image.fromarray(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8))
        smooth.resize((3000, 2000), Image.Resampling.BICUBIC).save(folder / f"class{i % 2}/{i}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=80)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size", type=int, default=28, help="ingest.image.image_size")
    args = parser.parse_args()
    from transferline.image.files import load_folder

    folder = Path(tempfile.mkdtemp(prefix="transferline-ingest-bench-"))
    write_photos(folder, args.images)
    rows = {}
    for channels in (1, 3):  # "full" runs first each round: the pixel difference is against it
        seconds: dict[str, list[float]] = {"reduced": [], "full": []}
        for _ in range(args.repeat):
            for how in ("full", "reduced"):
                with full_decode() if how == "full" else contextlib.nullcontext():
                    t0 = time.perf_counter()
                    x, _, _, bad, _ = load_folder(folder, args.size, channels)
                    seconds[how].append(time.perf_counter() - t0)
                assert not bad and len(x) == args.images
                if how == "full":
                    full_x = x.astype(np.int16)
                else:
                    diff = np.abs(x.astype(np.int16) - full_x)
        rate = {how: args.images / statistics.median(s) for how, s in seconds.items()}
        rows[f"{channels} channel(s)"] = {"images_per_s": {k: round(v, 1) for k, v in rate.items()},
                                          "speedup": round(rate["reduced"] / rate["full"], 2),
                                          "pixel_diff_mean": round(float(diff.mean()), 3),
                                          "pixel_diff_max": int(diff.max())}
    shutil.rmtree(folder)
    result = {"machine": f"{platform.machine()}, {platform.python_version()}", "images": args.images,
              "photo": "3000x2000 JPEG, quality 90", "size": args.size, "repeat": args.repeat, "results": rows}
    out = ROOT / "bench/results/folder_ingest.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
