"""MiniLM on Rotten Tomatoes: fine-tuning values per start, and task-adaptive
continued masked-LM pretraining (TAPT) against none. One fine-tune (or one
pretrain) per call, so each fits a short CPU-lock hold; every result is one
JSON line appended to bench/results/text_starts.jsonl.

    uv run python bench/text_starts.py prepare                      # ingest..preprocess, MiniLM tokenizer
    uv run python bench/text_starts.py finetune --init minilm --lr 5e-5 --epochs 3 --seed 42
    uv run python bench/text_starts.py pretrain --steps 600         # TAPT (resumes from its checkpoint)
    uv run python bench/text_starts.py finetune --init pretrain --lr 5e-5 --epochs 3 --seed 42

Works in .bench/text_starts/ (params.yaml's text values, modality text)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".bench/text_starts"
RESULTS = ROOT / "bench/results/text_starts.jsonl"


def load(overrides: dict) -> object:
    from transferline.config import parse_params

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["modality"] = "text"
    for section, values in overrides.items():
        raw[section]["text"] = {**raw[section].get("text", {}), **values}
    return parse_params(raw)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["prepare", "finetune", "pretrain"])
    ap.add_argument("--init", default="minilm")
    ap.add_argument("--lr", type=float)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--pretrain-lr", type=float, default=1e-4)
    ap.add_argument("--warmup-steps", type=int, default=30)
    ap.add_argument("--pretrain-batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", default="")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from transferline.io import read_json
    from transferline.text import evaluate, finetune, pretrain
    from transferline.text import data as td
    from transferline.text.models import load_classifier

    pre = {"steps": a.steps, "lr": a.pretrain_lr, "threads": a.threads, "eval_every": 50,
           "warmup_steps": a.warmup_steps, "batch_size": a.pretrain_batch}
    init = "pretrain" if a.what == "pretrain" else a.init  # a pretrain run needs its steps > 0 to be valid
    params = load({"pretrain": pre, "finetune": {"threads": a.threads, "candidates": ["scratch", init]}})
    params = params.model_copy(update={"seed": a.seed})
    paths = params.paths.under(WORK)
    t0 = time.perf_counter()
    row: dict = {"what": a.what, "tag": a.tag, "seed": a.seed}
    if a.what == "prepare":
        import importlib

        for stage in ("ingest", "validate", "split", "preprocess"):
            importlib.import_module(f"transferline.text.{stage}").run(params, paths)
    elif a.what == "pretrain":
        history = pretrain.run(params, paths)
        row.update(steps=a.steps, lr=a.pretrain_lr, history=history)
    elif a.what == "finetune":
        train = params.text.training_for(a.init)
        lr, epochs = a.lr or train.lr, a.epochs or train.epochs
        if a.batch_size:
            train = train.model_copy(update={"batch_size": a.batch_size})
        train = train.model_copy(update={"lr": lr, "epochs": epochs})
        hist = finetune.train_one(params, paths, "bench", a.init, "encoder", "full", train)
        meta = td.processed_meta(paths)
        y, pred = evaluate.test_predictions(load_classifier(paths.weights("bench")), params, paths, meta)
        row.update(init=a.init, lr=lr, epochs=epochs, batch_size=train.batch_size,
                   val_acc=[h["val_acc"] for h in hist], test_acc=round(float((y == pred).mean()), 4),
                   n_test=len(y), pretrain=read_json(paths.history("pretrain"))[-1] if a.init == "pretrain" else None)
    row["seconds"] = round(time.perf_counter() - t0, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k != "history"}))


if __name__ == "__main__":
    main()
