"""validate (images): can this data train? Shapes, channels, label range,
class counts, unreadable files, duplicates, and leakage between the future
train and test sets. Writes reports/validate.json; raises StageError with
every problem listed when the data cannot train."""

from __future__ import annotations

import logging

import numpy as np

from transferline.config import Params
from transferline.config.image import SplitParams
from transferline.errors import StageError
from transferline.image.data import TEST, TRAIN, VAL, assign_target, image_hashes
from transferline.io import load_arrays, read_json, write_json
from transferline.paths import Paths

log = logging.getLogger(__name__)


def class_counts(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Images per class, ignoring labels outside 0..n_classes-1 (reported apart)."""
    return np.bincount(y[(y >= 0) & (y < n_classes)], minlength=max(n_classes, 1))


def fitting_budget(smallest_class: int, cfg: SplitParams) -> dict[str, int]:
    """split.image values that fit the smallest class outside the test set where the current ones
    do not: the room shared between labels_per_class and val_per_class in their current
    proportion (the values that change). {} when they fit, or under 2 images are left (more data
    is the fix)."""
    available = int(smallest_class * (1 - cfg.test_fraction))
    wanted = cfg.labels_per_class + cfg.val_per_class
    if wanted <= available or available < 2:
        return {}
    labels = min(max(available * cfg.labels_per_class // wanted, 1), available - 1)
    fit = {"labels_per_class": labels, "val_per_class": available - labels}
    return {key: value for key, value in fit.items() if value != getattr(cfg, key)}


def budget_problem(smallest_class: int, cfg: SplitParams) -> str | None:
    """Why the label budget and the validation images per class do not fit in the smallest class
    outside the test set, with the values that would (validate, and pre-flight before any stage)."""
    available = int(smallest_class * (1 - cfg.test_fraction))
    wanted = cfg.labels_per_class + cfg.val_per_class
    if wanted <= available:
        return None
    fit = fitting_budget(smallest_class, cfg)
    fix = ("lower " + " and ".join(f"split.image.{key} to {value}" for key, value in fit.items())) if fit \
        else "add images to it"
    return (f"split.image.labels_per_class ({cfg.labels_per_class}) + split.image.val_per_class ({cfg.val_per_class}) "
            f"= {wanted}, but the smallest class has only {available} images outside the test set; {fix}")


def check_set(name: str, x: np.ndarray, y: np.ndarray, classes: list[str], params: Params) -> list[str]:
    """Problems with one set, each naming what to fix."""
    v = params.image
    size, channels = v.ingest.image_size, v.ingest.channels
    problems = []
    if x.ndim != 4 or x.shape[1:] != (channels, size, size):
        problems.append(f"{name}: images have shape {x.shape[1:]}, expected ({channels}, {size}, {size}) "
                        "(ingest.image.channels, ingest.image.image_size)")
    if x.dtype != np.uint8:
        problems.append(f"{name}: pixel type {x.dtype}, expected uint8")
    if len(x) != len(y):
        problems.append(f"{name}: {len(x)} images but {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= len(classes)):
        problems.append(f"{name}: labels span {y.min()}..{y.max()}, expected 0..{len(classes) - 1}")
    if len(classes) < 2:
        problems.append(f"{name}: {len(classes)} class(es); a classifier needs at least 2")
    counts = class_counts(y, len(classes))
    small = [f"{classes[c]} ({n})" for c, n in enumerate(counts) if n < v.validate_.min_per_class]
    if small:
        problems.append(f"{name}: classes with fewer than validate.image.min_per_class="
                        f"{v.validate_.min_per_class} images: {', '.join(small)}")
    return problems


SIDES = {TRAIN: "training", VAL: "validation", TEST: "test"}


def empty_side(name: str, side: int) -> str:
    """A class without images on one side of a folder's own split cannot train or be measured."""
    return (f"target: class {name!r} has no {SIDES[side]} images in the folder's split; add some to its "
            f"{SIDES[side]} folder")


def run(params: Params, paths: Paths) -> dict:
    """Check the raw sets; write the report; raise StageError if they cannot train."""
    v = params.image
    report = paths.report("validate")
    meta = read_json(paths.raw_meta)
    src, tgt = load_arrays(paths.raw / "source.npz"), load_arrays(paths.raw / "target.npz")
    classes = meta["target"]["classes"]
    problems = check_set("source", src["x"], src["y"], meta["source"]["classes"], params)
    problems += check_set("target", tgt["x"], tgt["y"], classes, params)

    bad = meta["target"]["unreadable"]
    if bad:
        shown = "; ".join(bad[:10]) + (f"; and {len(bad) - 10} more" if len(bad) > 10 else "")
        problems.append(f"target: {len(bad)} unreadable file(s) in {meta['target']['origin']}: {shown} "
                        "(fix or remove them)")

    hashes = image_hashes(tgt["x"])
    uniq, inverse, dup_counts = np.unique(hashes, return_inverse=True, return_counts=True)
    conflicting = sum(len(set(tgt["y"][inverse == g])) > 1 for g in np.flatnonzero(dup_counts > 1))
    if conflicting:
        problems.append(f"target: {conflicting} image(s) appear with different labels; fix their labels")

    counts = class_counts(tgt["y"], len(classes))
    given = tgt.get("split")  # a folder laid out by split: its sides decide, not the budget's room
    if given is None and (budget := budget_problem(int(counts.min()), v.split)):
        problems.append(budget)

    leaked = 0
    if not problems:
        train, val, test = assign_target(tgt["y"], hashes, v.split, params.seed, given)
        if given is not None:
            problems += [empty_side(name, side) for side, idx in zip((TRAIN, VAL, TEST), (train, val, test))
                         for c, name in enumerate(classes) if not (tgt["y"][idx] == c).any()]
        leaked = len(set(hashes[test]) & set(hashes[np.concatenate([train, val])]))
        if leaked > v.validate_.max_leaked:
            problems.append(f"target: {leaked} test image(s) also appear in train/val (leakage); "
                            "set split.image.dedupe: true or remove the duplicates")

    result = {
        "ok": not problems,
        "problems": problems,
        "source": {"n": int(len(src["y"])), "shape": list(src["x"].shape[1:])},
        "target": {
            "n": int(len(tgt["y"])),
            "shape": list(tgt["x"].shape[1:]),
            "class_counts": {c: int(n) for c, n in zip(classes, counts)},
            "unreadable": len(bad),
            "duplicate_images": int(len(hashes) - len(uniq)),
            "conflicting_labels": int(conflicting),
            "leaked_train_test": int(leaked),
        },
    }
    write_json(report, result)
    if problems:
        raise StageError("the data cannot train:\n  - " + "\n  - ".join(problems) + f"\n(full report: {report})")
    log.info("ok: %d target images, %d duplicates, %d leaked", len(tgt["y"]), result["target"]["duplicate_images"], leaked)
    return result
