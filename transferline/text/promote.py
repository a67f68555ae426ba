"""promote for `modality: text`: the current test split as a client would
send it (raw strings and class names), and the champion/challenger gate
(transferline.promotion) on the version register just made."""

from __future__ import annotations

import numpy as np

from transferline.config import Params
from transferline.paths import Paths
from transferline.promotion import PromotionError, TestSet, promote_registered
from transferline.text import data as td


def test_set(paths: Paths) -> TestSet:
    """Raw test strings (the served model's input) and their labels."""
    path = td.split_file(paths, "test")
    if not path.is_file():
        raise PromotionError(f"{path} not found; run the split stage first (transferline run --until split)")
    rows = td.read_jsonl(path)
    return TestSet(np.array([r["text"] for r in rows], dtype=object), [str(r["label"]) for r in rows], str(path))


def run(params: Params, paths: Paths) -> dict:
    return promote_registered(params, paths, test_set)
