"""preprocess for `modality: text`: the tokenizer (a WordPiece vocabulary
trained on the corpus, or a pretrained model's own) and the token-id caches:
${paths.processed}/tokenizer.json, target.safetensors (ids_/y_ of train, val,
test), source.safetensors (the corpus, for masked-LM pretraining), an empty
pool.safetensors and meta.json."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from transferline.config import Params
from transferline.config.text import model_folder
from transferline.errors import StageError
from transferline.io import read_json, write_json
from transferline.paths import Paths
from transferline.text import data as td

log = logging.getLogger(__name__)


# --- tokenizers: WordPiece trained on the corpus, or a pretrained model folder's own ---

SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def train_wordpiece(texts: list[str], vocab_size: int, lowercase: bool = True) -> Tokenizer:
    """A BERT-style WordPiece tokenizer learned from `texts`."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL), min_frequency=2,
                                        show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tok


def load_folder_tokenizer(folder: Path) -> Tokenizer:
    """tokenizer.json of a model folder (or a BERT vocab.txt)."""
    if (folder / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(folder / "tokenizer.json"))
    if (folder / "vocab.txt").is_file():
        from tokenizers.implementations import BertWordPieceTokenizer

        return BertWordPieceTokenizer(str(folder / "vocab.txt"), lowercase=True)._tokenizer
    raise FileNotFoundError(f"{folder} has neither tokenizer.json nor vocab.txt")


def special_ids(tok: Tokenizer) -> dict[str, int]:
    ids = {name: tok.token_to_id(name) for name in SPECIAL}
    missing = [k for k, v in ids.items() if v is None]
    if missing:
        raise ValueError(f"tokenizer lacks the special tokens {missing}")
    return ids  # type: ignore[return-value]


def encode(tok: Tokenizer, texts: list[str], max_length: int) -> torch.Tensor:
    """int32 ids (N, max_length), truncated and right-padded with [PAD]."""
    tok = Tokenizer.from_str(tok.to_str())  # do not change the caller's settings
    pad = special_ids(tok)["[PAD]"]
    tok.enable_truncation(max_length)
    tok.enable_padding(pad_id=pad, pad_token="[PAD]", length=max_length)
    ids = np.array([e.ids for e in tok.encode_batch(list(texts))], dtype=np.int32).reshape(-1, max_length)
    return torch.from_numpy(ids)


# --- the stage ---

def load_tokenizer(spec: str, corpus: list[str], params: Params) -> Tokenizer:
    """preprocess.text.tokenizer resolved (`params.text.tokenizer`): "train" (on the corpus),
    "minilm" or a model folder."""
    cfg = params.text.preprocess
    if spec == "train":
        return train_wordpiece(corpus, cfg.vocab_size, cfg.lowercase)
    folder = model_folder(spec)
    try:
        return load_folder_tokenizer(folder)
    except FileNotFoundError as err:
        raise StageError(f"preprocess.text.tokenizer: {err}") from None


def encode_splits(tok: Tokenizer, paths: Paths, classes: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """ids_<split> (N, max_length) and y_<split> (N,) for train, val and test."""
    tensors = {}
    for name in td.SPLITS:
        rows = td.read_jsonl(td.split_file(paths, name))
        tensors[f"ids_{name}"] = encode(tok, [r["text"] for r in rows], max_length)
        tensors[f"y_{name}"] = torch.tensor([classes.index(r["label"]) for r in rows], dtype=torch.int64)
    return tensors


def run(params: Params, paths: Paths) -> dict:
    """Tokenizer and token-id caches from ${paths.split}; the meta."""
    cfg = params.text.preprocess
    classes = read_json(paths.raw_meta)["target"]["classes"]
    corpus = [r["text"] for r in td.read_jsonl(td.split_file(paths, "corpus"))]
    tokenizer = params.text.tokenizer  # `auto` resolved: pretrain.text.continue_from's own
    tok = load_tokenizer(tokenizer, corpus, params)
    special = special_ids(tok)
    paths.processed.mkdir(parents=True, exist_ok=True)
    tok.save(str(td.tokenizer_file(paths)))
    target = encode_splits(tok, paths, classes, cfg.max_length)
    save_file({k: v.contiguous() for k, v in target.items()}, str(paths.cache("target")))
    source = encode(tok, corpus, cfg.max_length)
    # what pretrain needs travels in the cache it reads (checkpoint.read_meta): new labels
    # that leave the corpus and the tokenizer alone leave pretrain up to date
    source_meta = {"vocab_size": tok.get_vocab_size(), "max_length": cfg.max_length, "special_ids": special}
    save_file({"ids": source.contiguous()}, str(paths.cache("source")), metadata={"meta": json.dumps(source_meta)})
    # pretrain's deps name the image pipeline's unlabelled pool too; for text the
    # whole unlabelled corpus is source.safetensors, so the pool is empty.
    save_file({"ids": torch.zeros((0, cfg.max_length), dtype=torch.long)}, str(paths.cache("pool")))
    lengths = (target["ids_train"] != special["[PAD]"]).sum(1).float()
    meta = {"modality": "text", "target": {
        "classes": classes, "max_length": cfg.max_length, "tokenizer": tokenizer, "lowercase": cfg.lowercase,
        "vocab_size": tok.get_vocab_size(), "special_ids": special,
        "truncated_train_share": round(float((lengths >= cfg.max_length).float().mean()), 4),
    }, "source": {"n": len(corpus)}}
    write_json(paths.processed_meta, meta)
    log.info("tokenizer %s (vocab %d); %d corpus texts; %.1f%% of train texts truncated at %d tokens", tokenizer,
             tok.get_vocab_size(), len(corpus), 100 * meta["target"]["truncated_train_share"], cfg.max_length)
    return meta
