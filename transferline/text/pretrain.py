"""pretrain for `modality: text`: masked-LM pretraining on the corpus token ids
(${paths.processed}/source.safetensors): continued, task-adaptive pretraining
of a pretrained encoder (pretrain.text.continue_from: minilm or a model
folder), or a small BERT built from pretrain.text and trained from random
(continue_from: none). Writes the encoder to
${paths.models}/pretrain/model.safetensors (its BERT config in the meta), a
resumable checkpoint beside it, and ${paths.reports}/pretrain_history.json.
With pretrain.text.steps: 0 it trains nothing and writes an empty weights
file whose meta says so: finetune's DVC dependency exists, and
the candidate pretrain is refused by the schema."""

from __future__ import annotations

import logging

import torch

from transferline import distributed as dist
from transferline.checkpoint import read_meta, save_weights
from transferline.config import Params
from transferline.config.text import model_folder
from transferline.errors import StageError
from transferline.io import write_json
from transferline.paths import Paths
from transferline.runtime import resolve_device, seed_everything, set_threads
from transferline.text import data as td

log = logging.getLogger(__name__)

NOT_PRETRAINED = "none"  # the meta "objective" of the marker written when pretrain.text.steps is 0


def _start(params: Params, meta: dict) -> torch.nn.Module:
    """The masked-LM to train: pretrain.text.continue_from's weights, or a seeded random small BERT."""
    from transferline.text import models as tm
    from transferline.text.objectives import load_pretrained_mlm, new_mlm

    cfg = params.text.pretrain
    if cfg.continue_from == "none":
        config = tm.encoder_config(meta["vocab_size"], meta["max_length"], cfg, meta["special_ids"]["[PAD]"])
        return new_mlm(config, params.seed)
    folder = model_folder(cfg.continue_from)
    try:
        model = load_pretrained_mlm(folder)
    except (OSError, ValueError) as err:
        raise StageError(f"pretrain.text.continue_from: {err}") from None
    if model.config.vocab_size != meta["vocab_size"]:
        raise StageError(f"pretrain.text.continue_from: {folder} has a vocabulary of {model.config.vocab_size}, the "
                         f"corpus was tokenized with {meta['vocab_size']}; set preprocess.text.tokenizer: auto")
    return model


def run(params: Params, paths: Paths) -> list[dict]:
    """Pretrain (or resume) for pretrain.text.steps steps; the history, one row per evaluation."""
    cfg = params.text.pretrain
    if not cfg.steps:
        if dist.is_main():
            save_weights(torch.nn.Module(), paths.weights("pretrain"), meta={"objective": NOT_PRETRAINED, "steps": 0})
            write_json(paths.history("pretrain"), [])
        log.info("pretrain.text.steps is 0: no masked-LM pretraining")
        return []
    # transformers, only now: with steps 0 (the default) the stage ends in about a second
    from transferline.text import models as tm
    from transferline.text.objectives import pretrain_mlm

    meta = read_meta(paths.cache("source"))  # not meta.json: see preprocess
    set_threads(cfg.threads)
    seed_everything(params.seed)
    ids = td.load_set(paths, "source")["ids"]
    special = meta["special_ids"]
    model, history = pretrain_mlm(_start(params, meta), ids, special, cfg, resolve_device(params.device), params.seed,
                                  paths.checkpoint("pretrain"))
    if dist.is_main():  # under torchrun every rank holds these weights; one writes them
        arch = tm.arch_meta(tm.EncoderClassifier(model.config, 2), 2, special["[PAD]"])
        save_weights(model.bert, paths.weights("pretrain"), meta={"config": arch["config"], "objective": "masked-lm",
                                                                  "continued_from": cfg.continue_from,
                                                                  "steps": cfg.steps})
        write_json(paths.history("pretrain"), history)
    log.info("masked-token accuracy %.4f after %d steps", history[-1]["val_acc"], history[-1]["step"])
    return history
