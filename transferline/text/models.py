"""Text classifier architectures: a BERT-style encoder with mean pooling and a
linear head, and a BiLSTM baseline; `arch_meta` describes a model in its
weights file and `build_classifier` / `load_classifier` rebuild it from there
(evaluate, the experiments and serving). Where starting weights come from is
weights.py; what trains is strategies.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import BertConfig, BertModel

from transferline.checkpoint import load_weights, read_meta


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

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The encoder's mean over real tokens, (B, H): what the head sees."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, H)
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(input_ids, attention_mask)))


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


def load_classifier(path: str | Path) -> nn.Module:
    """A saved classifier (weights + the meta `arch_meta` wrote), in eval mode."""
    model = build_classifier(read_meta(path))
    model.load_state_dict(load_weights(path))
    return model.eval()


def trim(ids: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask) as int64, without the all-padding tail columns."""
    mask = ids != pad_id
    length = max(int(mask.sum(1).max()), 1)
    return ids[:, :length].long(), mask[:, :length].long()


@torch.inference_mode()
def predict_logits(model: nn.Module, ids: torch.Tensor, pad_id: int, batch_size: int, device: torch.device,
                   features: bool = False) -> torch.Tensor:
    """Logits (or, with `features`, the pooled features) for token ids, in input order, on the CPU."""
    model.eval()
    run = model.features if features else model
    # longest first, so each batch is trimmed to texts of similar length; then back to input order
    by_length = torch.argsort((ids != pad_id).sum(1), descending=True, stable=True)
    out = []
    for start in range(0, len(ids), batch_size):
        x, attn = trim(ids[by_length[start : start + batch_size]], pad_id)
        out.append(run(input_ids=x.to(device), attention_mask=attn.to(device)).float().cpu())
    if not out:
        return torch.zeros(0)
    logits = torch.empty_like(torch.cat(out))
    logits[by_length] = torch.cat(out)
    return logits
