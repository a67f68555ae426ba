"""pretrain for `modality: text`: masked-LM pretraining of a small BERT built
from pretrain.text, on the corpus token ids (${paths.processed}/source.safetensors).
Writes the encoder to ${paths.models}/pretrain/model.safetensors, a resumable
checkpoint beside it, and ${paths.reports}/pretrain_history.json."""

from __future__ import annotations

import logging

from transferline import distributed as dist
from transferline.checkpoint import read_meta, save_weights
from transferline.config import Params
from transferline.io import write_json
from transferline.paths import Paths
from transferline.runtime import resolve_device, seed_everything, set_threads
from transferline.text import data as td
from transferline.text import models as tm
from transferline.text.objectives import pretrain_mlm


log = logging.getLogger(__name__)


def run(params: Params, paths: Paths) -> list[dict]:
    """Pretrain (or resume) for pretrain.text.steps steps; the history, one row per evaluation."""
    cfg = params.text.pretrain
    meta = read_meta(paths.cache("source"))  # not meta.json: see preprocess
    set_threads(cfg.threads)
    seed_everything(params.seed)
    ids = td.load_set(paths, "source")["ids"]
    special = meta["special_ids"]
    config = tm.encoder_config(meta["vocab_size"], meta["max_length"], cfg, special["[PAD]"])
    model, history = pretrain_mlm(config, ids, special, cfg, resolve_device(params.device), params.seed,
                                  paths.checkpoint("pretrain"))
    if dist.is_main():  # under torchrun every rank holds these weights; one writes them
        arch = tm.arch_meta(tm.EncoderClassifier(config, 2), 2, special["[PAD]"])
        save_weights(model.bert, paths.weights("pretrain"), meta={"config": arch["config"], "objective": "masked-lm",
                                                                  "steps": cfg.steps})
        write_json(paths.history("pretrain"), history)
    log.info("masked-token accuracy %.4f after %d steps", history[-1]["val_acc"], history[-1]["step"])
    return history
