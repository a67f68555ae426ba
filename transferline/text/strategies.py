"""What trains when a text classifier is fine-tuned: the optimizer groups of a
strategy (full, frozen, discriminative learning rates), LoRA adapters (peft)
and folding them back into plain weights, and the trainable-parameter count."""

from __future__ import annotations

import torch
from torch import nn

from transferline.text.models import EncoderClassifier


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


def warmup_linear(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the base rate, then linear decay to 0 (BERT's schedule)."""
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(optimizer, warmup_steps, total_steps)
