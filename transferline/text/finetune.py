"""finetune for `modality: text`: one classifier per starting point in
finetune.text.candidates (MiniLM, our masked-LM encoder, a model folder, and
scratch: the baseline, our small encoder or a BiLSTM), each trained on the
label budget with finetune.text.strategy and the start's own values
(finetune.text.starts, looked up by `params.text.training_for`), scored with
LogME before training and on validation after; the best is kept
(transferline/candidates.py). Writes ${paths.models}/{finetune,scratch,
candidates/<start>}/model.safetensors (merged weights; their meta rebuilds
the model), reports/candidates.json and the *_history.json files. `train_one` is also what each
text-models experiment trial runs."""

from __future__ import annotations

import json
import logging

import torch
from transformers import BertConfig

from transferline import distributed as dist
from transferline.candidates import SCRATCH, compare, folder_name
from transferline.checkpoint import load_weights, read_meta, save_weights
from transferline.config import Params
from transferline.errors import StageError
from transferline.io import write_json
from transferline.paths import Paths
from transferline.runtime import resolve_device, seed_everything, set_threads
from transferline.text import data as td
from transferline.text import models as tm
from transferline.text import strategies as ts
from transferline.text.train import fit_classifier
from transferline.config.text import TextTraining, model_folder
from transferline.text.weights import load_pretrained_encoder
from transferline.transferability import logme

log = logging.getLogger(__name__)


def build_model(params: Params, paths: Paths, init_from: str, kind: str, meta: dict) -> tuple[torch.nn.Module, dict]:
    """(model, init report) for init_from pretrain | scratch | minilm | folder and kind encoder | bilstm."""
    cfg = params.text.finetune
    pad, n = meta["special_ids"]["[PAD]"], len(meta["classes"])
    if kind == "bilstm":
        return tm.BiLSTMClassifier(meta["vocab_size"], n, cfg.lstm_embedding, cfg.lstm_hidden, cfg.dropout, pad), {"init_from": "scratch"}
    if init_from == "pretrain":
        path = paths.weights("pretrain")
        if not path.is_file():
            raise StageError(f"{path} not found; run the pretrain stage first or drop pretrain from finetune.text.candidates")
        saved = read_meta(path)
        if "config" not in saved:  # the marker of pretrain.text.steps: 0
            raise StageError(f"{path} holds no pretrained encoder (pretrain.text.steps was 0); set pretrain.text.steps "
                             "and run pretrain, or drop pretrain from finetune.text.candidates")
        model = tm.EncoderClassifier(BertConfig(**json.loads(saved["config"])), n, cfg.dropout)
        model.encoder.load_state_dict(load_weights(path))
        return model, {"init_from": str(path), "continued_from": saved.get("continued_from", "none")}
    if init_from == "scratch":
        # always our small encoder (pretrain.text's shape) on the pipeline's token ids: one
        # architecture for finetune.text.starts.scratch's values, and the cheap model one would
        # ship without transfer (a MiniLM-sized model from random costs 6x the time for less)
        config = tm.encoder_config(meta["vocab_size"], meta["max_length"], params.text.pretrain, pad)
        return tm.EncoderClassifier(config, n, cfg.dropout), {"init_from": "scratch"}
    folder = model_folder(init_from)
    try:
        encoder = load_pretrained_encoder(folder)
    except (OSError, ValueError) as err:
        raise StageError(f"finetune.text.candidates ({init_from}): {err}") from None
    if encoder.config.vocab_size != meta["vocab_size"]:
        raise StageError(f"finetune.text.candidates: {folder} has a vocabulary of {encoder.config.vocab_size}, the "
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


def train_one(params: Params, paths: Paths, name: str, init_from: str, kind: str, strategy: str,
              train: TextTraining | None = None, labels_per_class: int = 0, out: Paths | None = None) -> list[dict]:
    """Train one classifier on the label budget (or `labels_per_class` seeded picks of it, seed
    params.seed) with `train` (default: the start's own, `params.text.training_for(init_from)`);
    save merged weights to out.weights(name) and the history to out.history(name).

    Reads the token ids and the pretrained encoder from `paths`; writes to `out`
    (default `paths`): an experiment trial reads the pipeline's data and writes
    into its own folder."""
    out = out or paths
    cfg = params.text.finetune
    train = train or params.text.training_for(init_from)
    meta = td.processed_meta(paths)
    set_threads(cfg.threads)
    generator = seed_everything(params.seed)
    model, report = build_model(params, paths, init_from, kind, meta)
    if strategy == "lora" and isinstance(model, tm.EncoderClassifier):
        model = ts.add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.dropout)
    groups = ts.param_groups(model, strategy, train.lr, cfg.lr_decay, train.weight_decay)
    trainable, total = ts.count_params(model)
    log.info("%s (%s, %s): %d of %d parameters train; lr %g, %d epochs, batch %d", kind, init_from, strategy,
             trainable, total, train.lr, train.epochs, train.batch_size)
    data = td.load_set(paths, "target")
    if labels_per_class:
        keep = subsample(data["y_train"], labels_per_class, params.seed)
        data["ids_train"], data["y_train"] = data["ids_train"][keep], data["y_train"][keep]
        log.info("label budget %d per class: %d of the split's training texts", labels_per_class, len(keep))
    history = fit_classifier(model, (data["ids_train"], data["y_train"]), (data["ids_val"], data["y_val"]), groups,
                             train.epochs, train.batch_size, train.warmup_fraction, meta["special_ids"]["[PAD]"],
                             resolve_device(params.device), generator, cfg.max_train_steps, desc=f"{kind} ({init_from})")
    if dist.is_main():  # under torchrun every rank holds these weights; one writes them
        model = ts.merged(model).cpu()
        arch = tm.arch_meta(model, len(meta["classes"]), meta["special_ids"]["[PAD]"])
        save_weights(model, out.weights(name), meta={**arch, **report, "strategy": strategy, **train.model_dump(),
                                                     "trainable_params": trainable,
                                                     "train_texts": len(data["y_train"])})
        write_json(out.history(name), history)
    return history


ESTIMATE_TEXTS = 1000  # LogME on a seeded subset of the train split: seconds for MiniLM on a CPU


def estimate(params: Params, paths: Paths, candidate: str, meta: dict, data: dict) -> float | None:
    """LogME of the candidate's frozen pooled features on (a subset of) the labelled train split;
    None for a BiLSTM baseline (no pretrained features to judge)."""
    kind = baseline_kind(params) if candidate == SCRATCH else "encoder"
    if kind != "encoder":
        return None
    seed_everything(params.seed)  # scratch's random features: the same draw each run
    model, _ = build_model(params, paths, candidate, kind, meta)
    keep = torch.randperm(len(data["y_train"]), generator=torch.Generator().manual_seed(params.seed))[:ESTIMATE_TEXTS]
    feats = tm.predict_logits(model, data["ids_train"][keep], meta["special_ids"]["[PAD]"],
                           params.text.evaluate.batch_size, resolve_device(params.device), features=True)
    return round(logme(feats.double().numpy(), data["y_train"][keep].numpy()), 5)


def baseline_kind(params: Params) -> str:
    return "bilstm" if params.text.finetune.baseline == "bilstm" else "encoder"


def run(params: Params, paths: Paths) -> dict:
    """Every candidate estimated, the shortlist fine-tuned (each with its own values), the best on
    validation kept (transferline/candidates.py); writes models/finetune as the winner's copy."""
    cfg = params.text.finetune
    meta = td.processed_meta(paths)
    set_threads(cfg.threads)
    data = td.load_set(paths, "target")
    estimates = {c: estimate(params, paths, c, meta, data) for c in cfg.candidates}

    def fine_tune(candidate: str) -> dict:
        kind = baseline_kind(params) if candidate == SCRATCH else "encoder"
        history = train_one(params, paths, folder_name(candidate), candidate, kind,
                            "full" if candidate == SCRATCH else cfg.strategy)
        best = max(history, key=lambda r: r["val_acc"])  # fit_classifier keeps the best epoch's weights
        return {"val_acc": best["val_acc"], "val_loss": best["val_loss"], "epochs": len(history)}

    return compare(paths, estimates, cfg.candidates_max, cfg.min_val_gain, fine_tune, write=dist.is_main())
