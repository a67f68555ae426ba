"""Tiny text parameters for tests: a 1-layer encoder, a few dozen labelled texts."""

from __future__ import annotations

from conftest import tiny_raw_params

TINY_TRAINING = {"lr": 0.001, "epochs": 2, "batch_size": 16}


def small_starts(**values) -> dict:
    """finetune.text.starts for our small encoder and its scratch baseline, tiny, with `values` on both."""
    return {"encoder": {**TINY_TRAINING, **values}, "scratch": {**TINY_TRAINING, **values}}


# our small encoder (continue_from: none), not MiniLM: seconds, not minutes
TINY_TEXT = {
    "split": {"test_fraction": 0.02, "labels_per_class": 40, "val_per_class": 15, "corpus_max_texts": 400},
    "preprocess": {"vocab_size": 800, "max_length": 32},
    "pretrain": {"continue_from": "none", "layers": 1, "hidden": 32, "heads": 2, "intermediate": 64, "steps": 12,
                 "batch_size": 32, "eval_every": 6, "warmup_steps": 2},
    "finetune": {"candidates": ["scratch", "pretrain"], "starts": small_starts()},
}


def tiny_text_raw(**text: dict) -> dict:
    """params.yaml as a dict with modality: text and tiny `text:` sub-sections; `text` overrides them."""
    raw = tiny_raw_params()
    raw["modality"] = "text"
    for section in {*TINY_TEXT, *text}:
        raw[section]["text"] = {**raw[section].get("text", {}), **TINY_TEXT.get(section, {}), **text.get(section, {})}
    return raw


def run_stages(params, paths, *stages: str) -> dict:
    """Run text stages in order, as tasks/<stage>.py does (`transferline.text.<stage>.run`); their results."""
    import importlib

    return {stage: importlib.import_module(f"transferline.text.{stage}").run(params, paths) for stage in stages}
