"""validate for `modality: text`: can the ingested texts train? Empty or
undecodable texts, missing labels, class sizes, test texts that also sit in a
user-given train/val split, length statistics; ${paths.reports}/validate.json
either way, and a StageError naming the file and rows when they cannot."""

from __future__ import annotations

import logging

from transferline.config import Params
from transferline.errors import StageError
from transferline.io import read_json, write_json
from transferline.paths import Paths
from transferline.text import data as td

log = logging.getLogger(__name__)


def run(params: Params, paths: Paths) -> dict:
    """Check texts.jsonl against validate.text; the report (raise StageError listing every problem)."""
    meta = read_json(paths.raw_meta)["target"]
    rows = td.read_jsonl(td.texts_file(paths))
    s = params.text.split
    problems, result = td.check_rows(rows, meta["origin"], meta["classes"], None, params.text.validate_,
                                     s.labels_per_class, s.val_per_class, s.test_fraction, params.seed)
    report = paths.report("validate")
    write_json(report, result)
    if problems:
        raise StageError("the data cannot train:\n  - " + "\n  - ".join(problems) + f"\n(full report: {report})")
    log.info("ok: %d labelled texts %s, %d unlabelled, %d duplicates, median %s words", result["labelled"],
             result["class_counts"], result["unlabelled"], result["duplicate_texts"], result["length"]["words"]["median"])
    return result
