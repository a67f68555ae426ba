"""promote (images): the current test split as a client would send it (raw
images and class names), and the champion/challenger gate
(transferline.promotion) on the version register just made."""


from __future__ import annotations

from transferline.config import Params
from transferline.image.data import processed_meta, served_layout
from transferline.io import load_arrays
from transferline.paths import Paths
from transferline.promotion import PromotionError, TestSet, promote_registered


def test_set(paths: Paths) -> TestSet:
    """Raw uint8 test images (greyscale as (N, H, W), the layout the served model promises) and their names."""
    split = paths.split / "target.npz"
    if not split.is_file():
        raise PromotionError(f"{split} not found; run the split stage first (transferline run --until split)")
    arrays = load_arrays(split)
    if "x_test" not in arrays or "y_test" not in arrays:
        raise PromotionError(f"{split}: no x_test/y_test arrays; re-run the split stage")
    classes = [str(c) for c in processed_meta(paths)["classes"]]
    return TestSet(served_layout(arrays["x_test"]), [classes[int(i)] for i in arrays["y_test"]], str(split))


def run(params: Params, paths: Paths) -> dict:
    return promote_registered(params, paths, test_set)
