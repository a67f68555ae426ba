"""split for `modality: text`: train/val/test of the labelled texts (the label
budget applied, a user's split column honoured) and the masked-LM corpus
(unlabelled rows + labelled texts outside the test set, never a test text),
as ${paths.split}/{train,val,test,corpus}.jsonl + ${paths.reports}/split.json."""

from __future__ import annotations

import logging

from transferline.config import Params
from transferline.io import read_json, write_json
from transferline.paths import Paths
from transferline.text import data as td

log = logging.getLogger(__name__)


def run(params: Params, paths: Paths) -> dict:
    """Write the three labelled splits and the corpus; their counts."""
    s = params.text.split
    meta = read_json(paths.raw_meta)["target"]
    rows = td.read_jsonl(td.texts_file(paths))
    parts = td.assign(rows, meta["classes"], s.test_fraction, s.val_per_class, s.labels_per_class, params.seed)
    corpus = parts.corpus[: s.corpus_max_texts]
    for name, idx in (("train", parts.train), ("val", parts.val), ("test", parts.test)):
        td.write_jsonl(td.split_file(paths, name), [{"text": rows[i]["text"], "label": rows[i]["label"]} for i in idx])
    td.write_jsonl(td.split_file(paths, "corpus"), [{"text": rows[i]["text"]} for i in corpus])
    counts = {
        "target": {"train": len(parts.train), "val": len(parts.val), "test": len(parts.test)},
        "target_train_per_class": {c: sum(rows[i]["label"] == c for i in parts.train) for c in meta["classes"]},
        "corpus": len(corpus),
        "corpus_policy": "unlabelled rows + labelled texts outside the test set; test texts never",
    }
    write_json(paths.report("split"), counts)
    log.info("train/val/test %s; MLM corpus %d texts", counts["target"], len(corpus))
    return counts
