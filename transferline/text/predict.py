"""predict (text): the files given to `transferline predict`: a .txt file holds one text a
line; a .csv, .tsv, .jsonl or .parquet file is read the way ingest reads one
(transferline.text.files.read_table: the same formats, separators and encoding), its texts
in ingest.text.text_column; no label column needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transferline.config import Params
from transferline.text import data as td
from transferline.text import files


def model_inputs(paths: list[Path], params: Params | None, model: Any) -> tuple[list[str], list[str], list[str]]:
    """(names, texts, 'name: why' for each path or row that holds no text). `model` is the served
    TextClassifier (it takes raw strings: nothing to adapt); `params` names the text column
    ("text" where the project is an image one)."""
    column = params.text.ingest.text_column if params is not None and params.text is not None else "text"
    names: list[str] = []
    texts: list[str] = []
    problems: list[str] = []
    for path in paths:
        if not path.is_file():
            problems.append(f"{path}: no such file (give a .txt file, one text a line, or a {files.KNOWN} file)")
            continue
        if path.suffix.lower() == ".txt":
            lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
            rows = [{"row": n, "text": line} for n, line in enumerate(lines, start=1) if line.strip()]
            where = "line"
        else:
            try:
                table = files.read_table(path)
            except td.TextDataError as err:
                problems.append(str(err).removeprefix("ingest.text.file: "))
                continue
            if column not in table.columns:
                problems.append(f"{path}: no column {column!r} (the texts' column, ingest.text.text_column); its "
                                f"columns are {list(table.columns)}: rename the texts' column to {column!r}")
                continue
            rows = [{"row": n, "text": files.missing_as_none(text)} for n, text in enumerate(table[column], start=1)]
            where = "row"
        for row in rows:
            if (why := td.text_problem(row["text"])) is not None:
                problems.append(f"{path} {where} {row['row']}: the text is {why}")
                continue
            names.append(f"{path} {where} {row['row']}")
            texts.append(row["text"])
    return names, texts, problems
