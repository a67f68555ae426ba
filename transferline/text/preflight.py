"""Pre-flight for text: the user's file and model folders, checked in seconds before
any stage runs (`transferline run` calls `check`). The file is read once, the
way ingest reads it, so what passes here is what ingest will see."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from transferline.config import Params
from transferline.config.text import MINILM
from transferline.text import data as td
from transferline.text import files

SHOWN = 10


def _undecodable_lines(path: Path) -> list[int]:
    """1-based numbers of the lines that are not UTF-8."""
    bad = []
    with path.open("rb") as f:
        for n, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                bad.append(n)
    return bad


def file_problems(params: Params) -> list[str]:
    """The file exists, decodes, parses, has the named columns and two classes, and passes validate."""
    cfg, v = params.text.ingest, params.text
    path = Path(cfg.file)
    try:
        rows = files.read_user_file(path, cfg.text_column, cfg.label_column, cfg.split_column)
    except td.TextDataError as err:
        return [str(err)]
    problems = []
    if path.suffix.lower() != ".parquet":
        bad = _undecodable_lines(path)
        if len(bad) > v.validate_.max_empty:
            shown = ", ".join(map(str, bad[:SHOWN])) + (f" and {len(bad) - SHOWN} more" if len(bad) > SHOWN else "")
            problems.append(f"{path}: line {shown} not UTF-8; save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 "
                            f"{path.name} > fixed{path.suffix}) or allow with validate.text.max_empty")
    labels = [r["label"] for r in rows if r["label"] is not None]
    column = f"{path}: label column {cfg.label_column!r} (ingest.text.label_column)"
    if not labels:
        problems.append(f"{column} is empty in every row; fill it in or name the right column")
    elif len(classes := sorted(set(labels))) < 2:
        problems.append(f"{column} holds one class ({classes[0]!r}); a classifier needs at least 2")
    if problems:
        return problems
    # The file reads: validate's own checks on the rows ingest would write (missing labels, class
    # sizes, leaks, the split's budget), so every problem is listed now, not one per stage run.
    s = v.split
    return td.check_rows(rows, str(path), classes, None, v.validate_, s.labels_per_class, s.val_per_class,
                         s.test_fraction, params.seed)[0]


def fitted_split(params: Params, root: Path) -> dict[str, int]:
    """The split values (dotted keys) that fit the file under `root` where params' do not, for
    `transferline init`: {} when they fit or the file cannot tell (the pre-flight then says why)."""
    cfg, s = params.text.ingest, params.text.split
    try:
        rows = files.read_user_file(root / cfg.file, cfg.text_column, cfg.label_column, cfg.split_column)
    except td.TextDataError:
        return {}
    counts = Counter(r["label"] for r in rows if r["label"] is not None and td.text_problem(r["text"]) is None)
    fit = td.fitting_val_per_class(min(counts.values()), s.val_per_class, s.test_fraction) if len(counts) > 1 else None
    return {} if fit is None else {"split.text.val_per_class": fit}


def folder_problems(key: str, spec: str, needs: tuple[str, ...]) -> list[str]:
    """A model folder named in params holds the files it must (safetensors only: no pickles)."""
    if spec in ("pretrain", "scratch", "train", "none", MINILM):
        return []
    folder = Path(spec)
    missing = [n for n in needs if not any((folder / alt).is_file() for alt in n.split(" or "))]
    if not missing:
        return []
    hint = " (a pytorch_model.bin is a pickle and is not read: save the model with safe_serialization=True)" \
        if (folder / "pytorch_model.bin").is_file() and "model.safetensors" in missing else ""
    return [f"{key}: {folder} lacks {', '.join(missing)}{hint}"]


def check(params: Params) -> list[str]:
    """Every problem with the text data and model folders this run would read."""
    v = params.text
    problems = file_problems(params) if v.ingest.source == "file" else []
    for start in v.finetune.candidates:
        problems += folder_problems("finetune.text.candidates", start, ("config.json", "model.safetensors"))
    problems += folder_problems("pretrain.text.continue_from", v.pretrain.continue_from, ("config.json", "model.safetensors"))
    problems += folder_problems("preprocess.text.tokenizer", v.tokenizer, ("tokenizer.json or vocab.txt",))
    return problems
