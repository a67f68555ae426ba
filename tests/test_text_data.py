"""Text ingest (built-in Rotten Tomatoes and user CSV/JSONL/Parquet), validation
errors that name the file and row, the leak-free split, and the modality switch."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from text_helpers import tiny_text_raw
from transferline.config import ParamsError, parse_params
from transferline.errors import StageError
from transferline.text import data as td
from transferline.text import files as tf
from transferline.text import ingest, split, validate

REVIEWS = [(f"review number {i} {'loved it' if i % 2 else 'hated it'}", "pos" if i % 2 else "neg") for i in range(40)]


def write_user_file(path, fmt: str, rows: list[dict]) -> None:
    df = pd.DataFrame(rows)
    if fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_parquet(path)


def params_for(path, **ingest) -> object:
    return parse_params(tiny_text_raw(ingest={"source": "file", "file": str(path), **ingest},
                                      validate={"min_per_class": 5}, split={"val_per_class": 3, "test_fraction": 0.2}))


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_user_file_with_configured_columns_ingests_and_validates(tmp_path, fmt):
    path = tmp_path / f"reviews.{fmt}"
    write_user_file(path, fmt, [{"body": t, "sentiment": y, "other": 1} for t, y in REVIEWS])
    params = params_for(path, text_column="body", label_column="sentiment")
    paths = params.paths.under(tmp_path)
    meta = ingest.run(params, paths)
    assert meta["target"]["classes"] == ["neg", "pos"] and meta["target"]["n"] == 40
    rows = td.read_jsonl(tmp_path / "data/raw/texts.jsonl")
    assert rows[3] == {"text": REVIEWS[3][0], "label": "pos", "row": 4, "split": None, "unlabelled": False}
    report = validate.run(params, paths)
    assert report["ok"] and report["class_counts"] == {"neg": 20, "pos": 20}
    assert report["length"]["words"]["min"] == 5 and report["class_balance"] == 1.0
    counts = split.run(params, paths)
    assert counts["target"] == {"train": 26, "val": 6, "test": 8}
    test_texts = {r["text"] for r in td.read_jsonl(tmp_path / "data/split/test.jsonl")}
    corpus = {r["text"] for r in td.read_jsonl(tmp_path / "data/split/corpus.jsonl")}
    assert len(corpus) == 32 and not corpus & test_texts  # the MLM corpus never holds a test text


@pytest.mark.parametrize(("name", "sep", "encoding"), [("semicolon.csv", ";", "utf-8-sig"), ("tabs.tsv", "\t", "utf-8"),
                                                   ("tabs.csv", "\t", "utf-8"), ("comma.csv", ",", "utf-8-sig")])
def test_spreadsheet_exports_read_with_their_own_separator(tmp_path, name, sep, encoding):
    """A spreadsheet set to a decimal-comma locale saves ';'-separated CSV (with a byte-order
    mark), others save tabs: each reads as the same rows, commas inside the texts kept."""
    rows = [{"text": f"{t}, honestly", "label": y} for t, y in REVIEWS]
    pd.DataFrame(rows).to_csv(tmp_path / name, sep=sep, index=False, encoding=encoding)
    read = tf.read_user_file(tmp_path / name, "text", "label")
    assert [(r["text"], r["label"]) for r in read] == [(r["text"], r["label"]) for r in rows]


def test_wrong_column_name_is_named(tmp_path):
    path = tmp_path / "reviews.csv"
    write_user_file(path, "csv", [{"text": t, "label": y} for t, y in REVIEWS])
    with pytest.raises(StageError, match=r"reviews.csv: no column 'sentiment' \(ingest.text.label_column\)"):
        params = params_for(path, label_column="sentiment")
        ingest.run(params, params.paths.under(tmp_path))


def test_validation_names_file_and_rows_of_empty_texts_missing_labels_and_leaks(tmp_path):
    rows = [{"text": t, "label": y, "part": "train"} for t, y in REVIEWS]
    rows[5]["text"] = "   "  # empty
    rows[7]["label"] = None  # missing label
    rows[9]["part"] = "test"
    rows[9]["text"] = rows[2]["text"]  # same text in test and train
    path = tmp_path / "reviews.csv"
    write_user_file(path, "csv", rows)
    (tmp_path / "bad.csv").write_bytes(path.read_bytes().replace(b"review number 12 ", b"review \xff\xfe 12 "))
    params = params_for(tmp_path / "bad.csv", split_column="part")
    paths = params.paths.under(tmp_path)
    ingest.run(params, paths)
    with pytest.raises(StageError) as err:
        validate.run(params, paths)
    msg = str(err.value)
    assert "bad.csv: 2 row(s) with an empty or non-decodable text (empty, not UTF-8 (undecodable bytes)): row 6, 13" in msg
    assert "bad.csv: 1 row(s) without a label: row 8" in msg
    assert "bad.csv: row 10 (test) has the same text as row 3 (train)" in msg
    report = json.loads((tmp_path / "reports/validate.json").read_text())
    assert report["leaked_across_splits"] == 1 and report["missing_labels"] == 1 and not report["ok"]
    assert not (tmp_path / "data/split").exists()


def test_a_split_column_decides_sides_and_the_budgets_still_cap():
    """Rows with a split value stay on that side: every test row is tested, val and train rows
    come first and are capped by val_per_class and labels_per_class, as the image folders' own
    split (no given row ever moves to another side); rows without one are cut as always."""
    rows = []
    for c in ("pos", "neg"):
        for i, side in enumerate(["train"] * 8 + ["val"] * 2 + ["test"] * 2 + [None] * 10):
            rows.append({"text": f"{c} review {i}", "label": c, "split": side, "row": len(rows) + 1})
    parts = td.assign(rows, ["pos", "neg"], test_fraction=0.2, val_per_class=3, labels_per_class=5, seed=1)
    side = {i: rows[i]["split"] for i in range(len(rows))}
    assert len(parts.test) == 2 * (2 + 2) and [side[i] for i in parts.test].count("test") == 4
    assert len(parts.val) == 2 * 3 and [side[i] for i in parts.val].count("val") == 4
    assert len(parts.train) == 2 * 5 and all(side[i] == "train" for i in parts.train)
    assert all(side[i] in (s, None) for s, idx in zip(("train", "val", "test"), (parts.train, parts.val, parts.test)) for i in idx)
    for r in rows:  # no val rows named: val comes from the rows without a split, then from train rows
        r["split"] = "train" if r["split"] == "val" else r["split"]
    parts = td.assign(rows, ["pos", "neg"], test_fraction=0.2, val_per_class=12, labels_per_class=5, seed=1)
    val_sides = [rows[i]["split"] for i in parts.val]
    assert len(parts.val) == 24 and val_sides.count(None) == 16 and val_sides.count("train") == 8
    assert not set(parts.val) & set(parts.train) and len(parts.train) == 10


def test_rotten_tomatoes_builtin_labelled_and_corpus(tmp_path):
    params = parse_params(tiny_text_raw())
    paths = params.paths.under(tmp_path)
    meta = ingest.run(params, paths)
    assert meta["target"]["classes"] == ["fresh", "rotten"]
    report = validate.run(params, paths)
    # DESIGN.md: fresh 7,368 / rotten 5,384 after dropping "plot" rows and duplicate texts
    assert report["class_counts"]["fresh"] == 7368 and abs(report["class_counts"]["rotten"] - 5384) <= 2
    assert report["unlabelled"] > 1000 and report["duplicate_texts"] == 0
    counts = split.run(params, paths)
    assert counts["target"]["train"] == 80 and counts["corpus"] == 400


def test_text_params_are_checked():
    with pytest.raises(ParamsError, match="finetune.text.strategy"):
        parse_params(tiny_text_raw(finetune={"strategy": "sideways"}))
    with pytest.raises(ParamsError, match="finetune.text.colour: unknown key"):
        parse_params(tiny_text_raw(finetune={"colour": 1}))
    with pytest.raises(ParamsError, match=r"finetune.text.starts.minilm.learning_rate: unknown key"):
        parse_params(tiny_text_raw(finetune={"starts": {"minilm": {"lr": 5e-5, "epochs": 3, "learning_rate": 1}}}))
    with pytest.raises(ParamsError, match="finetune.text.lr: unknown key"):  # the rate belongs to a start now
        parse_params(tiny_text_raw(finetune={"lr": 1e-3}))
    assert parse_params(tiny_text_raw()).model_name == "transferline-text"


def _shipped_text_raw(**text: dict) -> dict:
    """params.yaml as shipped, modality text, with `text` merged into the text sub-sections."""
    import yaml

    from conftest import ROOT

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["modality"] = "text"
    for section, values in text.items():
        raw[section]["text"] = {**raw[section]["text"], **values}
    return raw


def test_each_start_trains_with_its_own_values():
    """Switching the start switches its training values; `pretrain` takes those of what it continued."""
    shipped = parse_params(_shipped_text_raw())
    text = shipped.text
    assert (text.finetune.candidates, text.tokenizer) == (["scratch", "minilm"], "minilm")  # MiniLM and its tokenizer by default
    assert text.training_for("minilm").lr <= 1e-4 < text.training_for("scratch").lr
    assert text.training_for("minilm") == text.finetune.starts.minilm
    assert text.training_for("scratch") == text.finetune.starts.scratch
    assert text.training_for("data/external/weights/bert") == text.finetune.starts.pretrained
    tapt = parse_params(_shipped_text_raw(pretrain={"steps": 100}, finetune={"candidates": ["scratch", "pretrain"]})).text
    assert tapt.training_for("pretrain") == tapt.finetune.starts.minilm  # MiniLM + continued pretraining
    own = parse_params(_shipped_text_raw(pretrain={"continue_from": "none", "steps": 100},
                                         finetune={"candidates": ["scratch", "pretrain"]})).text
    assert own.training_for("pretrain") == own.finetune.starts.encoder and own.tokenizer == "train"


def test_a_start_with_another_tokenizer_is_refused():
    with pytest.raises(ParamsError, match=r"candidates names 'minilm', so the text must be tokenized with 'minilm'.*"
                                          r"preprocess.text.tokenizer 'train'.*Set preprocess.text.tokenizer: auto"):
        parse_params(_shipped_text_raw(preprocess={"tokenizer": "train"}))
    with pytest.raises(ParamsError, match=r"'train' \(auto, from pretrain.text.continue_from\)"):
        parse_params(_shipped_text_raw(pretrain={"continue_from": "none"}))
    with pytest.raises(ParamsError, match="candidates names 'pretrain' but pretrain.text.steps is 0"):
        parse_params(_shipped_text_raw(finetune={"candidates": ["scratch", "pretrain"]}, pretrain={"steps": 0}))


def test_modality_switch_rewrites_only_that_line(tmp_path):
    from transferline.config.edit import set_modality

    path = tmp_path / "params.yaml"
    path.write_text("# top\nseed: 1\nmodality: image   # image | text\nsplit:\n  modality: x\n")
    assert set_modality(path, "text")
    # the comment keeps its column
    assert path.read_text() == "# top\nseed: 1\nmodality: text    # image | text\nsplit:\n  modality: x\n"
    assert not set_modality(path, "text")
