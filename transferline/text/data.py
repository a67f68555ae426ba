"""Text data sets: read the built-in Rotten Tomatoes set (a user's file is
read by transferline.text.files), check it can train, split it without leaking test
texts, and read back what preprocess cached (`processed_meta`, `load_set`).
The names of the text files inside each `Paths` folder are spelled here once.

Rows are kept as plain dicts {"text", "label", "row", "split"} in JSONL files:
`row` is the 1-based data row in the origin file (errors name it), `label`
is None for unlabelled text (Rotten Tomatoes' "plot" rows, which only feed
the masked-LM corpus), `split` is a user-given train/val/test or None.
"""

from __future__ import annotations

import bz2
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from transferline.errors import StageError
from transferline.io import read_json
from transferline.paths import Paths

if TYPE_CHECKING:
    import torch

RT_UNLABELLED = "plot"
SPLITS = ("train", "val", "test")


class TextDataError(ValueError):
    """The text data cannot be read or cannot train; the message names file, row or key."""


def texts_file(paths: Paths) -> Path:
    """ingest's rows: {"text", "label", "row", "split", "unlabelled"} per line."""
    return paths.raw / "texts.jsonl"


def split_file(paths: Paths, name: str) -> Path:
    """split's output: train, val, test ({"text", "label"}) or corpus ({"text"})."""
    return paths.split / f"{name}.jsonl"


def tokenizer_file(paths: Paths) -> Path:
    """preprocess's tokenizer, which the registered model carries too."""
    return paths.processed / "tokenizer.json"


def processed_meta(paths: Paths) -> dict:
    """What preprocess recorded about the token ids (classes, vocab, special ids, max_length)."""
    meta = read_json(paths.processed_meta)
    if meta.get("modality") != "text":
        raise StageError(f"{paths.processed_meta} is not text data; re-run the pipeline from ingest (modality: text)")
    return meta["target"]


def load_set(paths: Paths, name: str) -> dict[str, torch.Tensor]:
    """The cached token ids of one set: "target" (ids_/y_ train, val, test) or "source" (ids)."""
    # imported here: ingest, validate and split read this module and need no torch
    from safetensors.torch import load_file

    return load_file(str(paths.cache(name)))


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")
    return path


def rotten_tomatoes_rows(csv_bz2: bytes) -> tuple[list[dict], dict]:
    """Labelled fresh/rotten snippets (duplicates and empty texts dropped) plus the
    unlabelled "plot" rows; and counts of what was dropped."""
    import pandas as pd  # here, not at the top: only ingest reads CSV/Parquet

    df = pd.read_csv(io.BytesIO(bz2.decompress(csv_bz2)))
    rows, seen, dropped = [], set(), {"empty": 0, "duplicate": 0}
    for i, (cat, text) in enumerate(zip(df["category"], df["text"]), start=1):
        if not isinstance(text, str) or not text.strip():
            dropped["empty"] += 1
            continue
        key = normalise(text)
        if key in seen:  # first occurrence wins, labelled or not
            dropped["duplicate"] += 1
            continue
        seen.add(key)
        rows.append({"text": text, "label": None if cat == RT_UNLABELLED else str(cat), "row": i, "split": None,
                     "unlabelled": cat == RT_UNLABELLED})
    return rows, dropped


def normalise(text: str) -> str:
    """Duplicate key: case and whitespace do not make a text new."""
    return re.sub(r"\s+", " ", text).strip().lower()


def text_problem(text: Any) -> str | None:
    if not isinstance(text, str):
        return "missing" if text is None else f"not text ({type(text).__name__})"
    if not text.strip():
        return "empty"
    if "\ufffd" in text:
        return "not UTF-8 (undecodable bytes)"
    return None


@dataclass(frozen=True)
class TextSplit:
    train: list[int]
    val: list[int]
    test: list[int]
    corpus: list[int]  # unlabelled rows + labelled rows outside the test set


def assign(rows: list[dict], classes: list[str], test_fraction: float, val_per_class: int,
           labels_per_class: int, seed: int) -> TextSplit:
    """Per class: seeded shuffle, cut into test / val / train (label budget). A user's split
    column decides the side of the rows that have one: its test rows are all tested; its val
    and train rows come first, capped by the budgets like the rest (a file without val rows
    has val cut from its train rows). Duplicate texts keep their first row only, so a text can
    never sit on both sides."""
    usable = [i for i, r in enumerate(rows) if text_problem(r["text"]) is None]
    seen, keep = set(), []
    for i in usable:
        key = normalise(rows[i]["text"])
        if key not in seen:
            seen.add(key)
            keep.append(i)
    rng = np.random.default_rng(seed)
    shuffled = lambda idx: [int(i) for i in rng.permutation(np.asarray(idx, dtype=np.int64))] if idx else []  # noqa: E731
    parts: dict[str, list[int]] = {s: [] for s in SPLITS}
    gives_val = any(rows[i]["split"] == "val" for i in keep)
    for c in classes:
        mine = [i for i in keep if rows[i]["label"] == c]
        given = {s: shuffled([i for i in mine if rows[i]["split"] == s]) for s in SPLITS}
        free = shuffled([i for i in mine if rows[i]["split"] not in SPLITS])
        n_test = int(round(test_fraction * len(free)))
        rest = free[n_test:]
        # a file that names no val rows has them cut from its train rows, as a folder without val/
        val = (given["val"] + rest + ([] if gives_val else given["train"]))[:val_per_class]
        parts["test"] += given["test"] + free[:n_test]
        parts["val"] += val
        taken = set(val)
        parts["train"] += [i for i in given["train"] + rest if i not in taken][:labels_per_class]
    test = set(parts["test"])
    corpus = [i for i in keep if i not in test]
    return TextSplit(*(sorted(int(i) for i in parts[s]) for s in SPLITS), corpus=corpus)


def length_stats(texts: list[str]) -> dict:
    chars = np.array([len(t) for t in texts]) if texts else np.zeros(1)
    words = np.array([len(t.split()) for t in texts]) if texts else np.zeros(1)
    stat = lambda a: {"min": int(a.min()), "median": float(np.median(a)), "mean": round(float(a.mean()), 1),  # noqa: E731
                      "p95": float(np.percentile(a, 95)), "max": int(a.max())}
    return {"chars": stat(chars), "words": stat(words)}


def fitting_val_per_class(smallest_class: int, val_per_class: int, test_fraction: float) -> int | None:
    """A split.text.val_per_class that leaves training texts in the smallest class (a fifth of what
    the test set leaves), or None when the current one does. labels_per_class needs no fit: a
    class with fewer texts trains on all it has."""
    available = int(smallest_class * (1 - test_fraction))
    return max(available // 5, 1) if val_per_class + 1 > available else None


def check_rows(rows: list[dict], origin: str, classes: list[str], split_rows: list[dict] | None,
               cfg: Any, labels_per_class: int, val_per_class: int, test_fraction: float, seed: int) -> tuple[list[str], dict]:
    """(problems, report) for the ingested rows; every problem names the origin and rows."""
    def rows_of(idx: list[int]) -> str:
        shown = ", ".join(str(rows[i]["row"]) for i in idx[:10])
        return shown + (f" and {len(idx) - 10} more" if len(idx) > 10 else "")

    problems: list[str] = []
    bad = [i for i, r in enumerate(rows) if text_problem(r["text"]) is not None]
    missing = [i for i, r in enumerate(rows) if r["label"] is None and r.get("unlabelled") is not True]
    if len(bad) > cfg.max_empty:
        kinds = sorted({text_problem(rows[i]["text"]) for i in bad})
        problems.append(f"{origin}: {len(bad)} row(s) with an empty or non-decodable text ({', '.join(kinds)}): "
                        f"row {rows_of(bad)} (fix them, or allow with validate.text.max_empty)")
    if len(missing) > cfg.max_missing_labels:
        problems.append(f"{origin}: {len(missing)} row(s) without a label: row {rows_of(missing)} "
                        "(add labels, or allow with validate.text.max_missing_labels; they then only feed the MLM corpus)")
    bad_split = [i for i, r in enumerate(rows) if r["split"] is not None and r["split"] not in SPLITS]
    if bad_split:
        problems.append(f"{origin}: split column values must be train, val or test: row {rows_of(bad_split)}")
    labelled = [r for r in rows if r["label"] is not None and text_problem(r["text"]) is None]
    counts = {c: sum(r["label"] == c for r in labelled) for c in classes}
    if len(classes) < 2:
        problems.append(f"{origin}: {len(classes)} class(es); a classifier needs at least 2")
    small = [f"{c} ({n})" for c, n in counts.items() if n < cfg.min_per_class]
    if small:
        problems.append(f"{origin}: classes with fewer than validate.text.min_per_class={cfg.min_per_class} texts: "
                        f"{', '.join(small)}; add texts or lower the minimum")

    # The same text on both sides of a user-given split leaks the answer.
    leaked: list[int] = []
    by_split: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
    for i, r in enumerate(rows):
        if r["split"] in SPLITS and text_problem(r["text"]) is None:
            by_split[r["split"]].setdefault(normalise(r["text"]), i)
    for key, i in by_split["test"].items():
        for other in ("train", "val"):
            if key in by_split[other]:
                leaked.append(i)
                if len(leaked) <= 10:
                    problems.append(f"{origin}: row {rows[i]['row']} (test) has the same text as row "
                                    f"{rows[by_split[other][key]]['row']} ({other})")
    if len(leaked) > cfg.max_leaked:
        problems.append(f"{origin}: {len(leaked)} test text(s) also in train/val (leakage); remove the duplicates "
                        "or allow with validate.text.max_leaked")
    else:  # tolerated ones are not problems
        problems = [p for p in problems if "has the same text as row" not in p]

    keys = [normalise(r["text"]) for r in labelled]
    labels_of: dict[str, set] = {}
    for k, r in zip(keys, labelled):
        labels_of.setdefault(k, set()).add(r["label"])
    conflicting = sum(len(v) > 1 for v in labels_of.values())
    if len(classes) >= 2 and counts:
        smallest = min(counts.values())
        if (fit := fitting_val_per_class(smallest, val_per_class, test_fraction)) is not None:
            problems.append(f"split.text.val_per_class ({val_per_class}) leaves no training text in the smallest "
                            f"class ({int(smallest * (1 - test_fraction))} outside the test set); lower it: {fit} "
                            "(a fifth) leaves the rest to train")
    report = {
        "ok": not problems,
        "problems": problems,
        "origin": origin,
        "rows": len(rows),
        "labelled": len(labelled),
        "unlabelled": sum(r["label"] is None for r in rows),
        "class_counts": counts,
        "class_balance": round(min(counts.values()) / max(max(counts.values()), 1), 4) if counts else 0.0,
        "empty_or_undecodable": len(bad),
        "missing_labels": len(missing),
        "duplicate_texts": len(keys) - len(set(keys)),
        "conflicting_labels": conflicting,
        "leaked_across_splits": len(leaked),
        "length": length_stats([r["text"] for r in rows if text_problem(r["text"]) is None]),
        "label_budget": {"labels_per_class": labels_per_class, "available_per_class": {
            c: int(n * (1 - test_fraction)) - val_per_class for c, n in counts.items()}},
    }
    return problems, report
