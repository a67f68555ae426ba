"""A user's text file read into rows: CSV (its separator found from the
header line), TSV, JSONL or Parquet, as ingest, the pre-flight, init and
`transferline predict` read it; bytes that are not UTF-8 become U+FFFD and a
bad JSON line is named by its number.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from transferline.text.data import TextDataError

FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
KNOWN = ".csv, .tsv, .jsonl or .parquet"  # FORMATS as a user reads them


def missing_as_none(value: Any) -> Any:
    """NaN/None -> None; everything else unchanged (validate judges it)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return value


def read_table(path: Path) -> Any:
    """A CSV, TSV, JSONL or Parquet file as a pandas DataFrame of objects; bytes that are not
    UTF-8 become U+FFFD (validate reports those rows as non-decodable)."""
    import pandas as pd

    if not path.is_file():
        raise TextDataError(f"ingest.text.file: {path} not found; put the file there or fix the path")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise TextDataError(f"ingest.text.file: {path} has extension {path.suffix!r}; use {KNOWN}")
    if path.stat().st_size == 0:
        raise TextDataError(f"ingest.text.file: {path} is empty; put the data in it (a header row, then one row per text)")
    try:
        if fmt == "csv":
            df = pd.read_csv(path, sep=separator(path), dtype=object, keep_default_na=True, encoding="utf-8",
                             encoding_errors="replace")
        elif fmt == "jsonl":
            df = pd.DataFrame.from_records(_jsonl_records(path))
        else:
            df = pd.read_parquet(path)
    except TextDataError:
        raise
    except (ValueError, OSError, pd.errors.ParserError) as err:
        raise TextDataError(f"{path}: cannot be read as {fmt}: {err}") from None
    if df.empty:
        raise TextDataError(f"ingest.text.file: {path} has no data rows")
    return df


def read_user_file(path: Path, text_column: str, label_column: str, split_column: str = "") -> list[dict]:
    """Rows of the user's file (read_table), as ingest keeps them."""
    df = read_table(path)
    missing = [(key, col) for key, col in (("text_column", text_column), ("label_column", label_column),
                                           ("split_column", split_column)) if col and col not in df.columns]
    if missing:  # every wrong name at once, and the command that renames them
        named = ", ".join(f"no column {col!r} (ingest.text.{key})" for key, col in missing)
        fix = " ".join(f"--set ingest.text.{key}=COLUMN" for key, _ in missing)
        raise TextDataError(f"{path}: {named}; its columns are {list(df.columns)}: name yours with "
                            f"`transferline run {fix}`")
    rows = []
    for i, rec in enumerate(df.to_dict("records"), start=1):
        label = missing_as_none(rec[label_column])
        split = missing_as_none(rec[split_column]) if split_column else None
        rows.append({"text": missing_as_none(rec[text_column]), "label": None if label is None else str(label),
                     "row": i, "split": None if split is None else str(split).strip().lower(), "unlabelled": False})
    return rows


def separator(path: Path) -> str:
    """A .tsv's tab; for a .csv, what its header line holds: a comma, else a semicolon (what a
    spreadsheet writes where the decimal mark is a comma), a tab or a pipe; a comma for one column."""
    if path.suffix.lower() == ".tsv":
        return "\t"
    with path.open(encoding="utf-8-sig", errors="replace") as f:
        header = f.readline()
    return next((sep for sep in ",;\t|" if sep in header), ",")


def _jsonl_records(path: Path) -> list[dict]:
    """One JSON object a line; a bad line is named by its number (pandas gives a byte offset)."""
    records = []
    for n, line in enumerate(path.read_bytes().decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise TextDataError(f"{path}: line {n} is not valid JSON ({err.msg} at column {err.colno}); "
                                "fix or delete that line") from None
        if not isinstance(rec, dict):
            raise TextDataError(f"{path}: line {n} is a JSON {type(rec).__name__}, not an object "
                                '({"text": ..., "label": ...}); fix that line')
        records.append(rec)
    return records
