"""Text classifiers: a BERT-style encoder with mean pooling and a linear head
(from a config, our MLM checkpoint or a pretrained model folder), and a
BiLSTM baseline. Fine-tuning strategies: full, frozen, lora, discriminative."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import BertConfig, BertModel


def encoder_config(vocab_size: int, max_length: int, cfg: Any, pad_id: int) -> BertConfig:
    """A small BERT from pretrain.text values (layers, hidden, heads, intermediate)."""
    return BertConfig(vocab_size=vocab_size, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
                      num_attention_heads=cfg.heads, intermediate_size=cfg.intermediate,
                      max_position_embeddings=max(max_length, 64), hidden_dropout_prob=cfg.dropout,
                      attention_probs_dropout_prob=cfg.dropout, pad_token_id=pad_id, type_vocab_size=2)


class EncoderClassifier(nn.Module):
    """BERT encoder -> mean over real tokens -> dropout -> linear head."""

    def __init__(self, config: BertConfig, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.config = config
        self.encoder = BertModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(config.hidden_size, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, H)
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, H)
        return self.head(self.dropout(pooled))


class BiLSTMClassifier(nn.Module):
    """Embedding -> 1-layer BiLSTM -> max over real tokens -> linear head."""

    def __init__(self, vocab_size: int, num_classes: int, embedding: int = 128, hidden: int = 128,
                 dropout: float = 0.1, pad_id: int = 0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embedding, padding_idx=pad_id)
        self.lstm = nn.LSTM(embedding, hidden, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.dropout(self.embed(input_ids)))  # (B, L, 2H)
        out = out.masked_fill(attention_mask.unsqueeze(-1) == 0, -1e4)
        return self.head(self.dropout(out.max(dim=1).values))


def build_classifier(meta: dict) -> nn.Module:
    """The architecture a weights file's meta describes (see `arch_meta`)."""
    if meta["arch"] == "bilstm":
        return BiLSTMClassifier(meta["vocab_size"], meta["num_classes"], meta["embedding"], meta["hidden"],
                                pad_id=meta["pad_id"])
    if meta["arch"] == "encoder":
        return EncoderClassifier(BertConfig(**json.loads(meta["config"])), meta["num_classes"])
    raise ValueError(f"unknown text architecture {meta['arch']!r}")


def arch_meta(model: nn.Module, num_classes: int, pad_id: int) -> dict:
    """What `build_classifier` needs to rebuild `model` (stored in the safetensors metadata)."""
    if isinstance(model, BiLSTMClassifier):
        return {"arch": "bilstm", "vocab_size": model.embed.num_embeddings, "num_classes": num_classes,
                "embedding": model.embed.embedding_dim, "hidden": model.lstm.hidden_size, "pad_id": pad_id}
    cfg = model.config.to_diff_dict()
    cfg.pop("transformers_version", None)
    return {"arch": "encoder", "num_classes": num_classes, "pad_id": pad_id, "config": json.dumps(cfg)}


def load_pretrained_encoder(folder: Path) -> BertModel:
    """A BERT encoder from a local model folder: safetensors only, no remote code."""
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}/config.json not found; a model folder needs config.json and model.safetensors")
    config = BertConfig.from_pretrained(str(folder), local_files_only=True)
    if config.model_type != "bert":
        raise ValueError(f"{folder}: model_type {config.model_type!r}; only BERT-style encoders are supported")
    return BertModel.from_pretrained(str(folder), config=config, add_pooling_layer=False, local_files_only=True,
                                     use_safetensors=True, trust_remote_code=False)


# --- strategies ---------------------------------------------------------

def encoder_layers(model: EncoderClassifier) -> list[nn.Module]:
    """Bottom to top: embeddings, then each transformer layer."""
    return [model.encoder.embeddings, *model.encoder.encoder.layer]


def param_groups(model: nn.Module, strategy: str, lr: float, lr_decay: float, weight_decay: float) -> list[dict]:
    """Optimizer groups for a strategy; frozen parameters get requires_grad False."""
    if strategy == "frozen" and isinstance(model, EncoderClassifier):
        for p in model.encoder.parameters():
            p.requires_grad_(False)
    if strategy == "discriminative" and isinstance(model, EncoderClassifier):
        layers = encoder_layers(model)
        groups = [{"params": list(model.head.parameters()), "lr": lr}]
        for depth, layer in enumerate(reversed(layers), start=1):  # top layer first
            groups.append({"params": list(layer.parameters()), "lr": lr * lr_decay**depth})
        return [{**g, "weight_decay": weight_decay} for g in groups]
    return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr, "weight_decay": weight_decay}]


def add_lora(model: EncoderClassifier, r: int, alpha: int, dropout: float = 0.1) -> nn.Module:
    """LoRA adapters (peft) on the attention query/value projections; only they and the head train."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=["query", "value"],
                     modules_to_save=["head"])
    return get_peft_model(model, cfg)


def merged(model: nn.Module) -> nn.Module:
    """A plain classifier: LoRA weights folded into the base weights (nothing from peft at serving)."""
    from peft import PeftModel

    return model.merge_and_unload() if isinstance(model, PeftModel) else model


def count_params(model: nn.Module) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
