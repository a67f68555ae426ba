"""Tokenizers: a WordPiece vocabulary trained on the corpus with the `tokenizers`
library, or the tokenizer of a pretrained model folder. Either way one
tokenizer.json travels with the data and the registered model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

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
