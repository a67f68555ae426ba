"""The training loop shared by pretrain and finetune: `train_one_epoch`,
`evaluate`, and `fit`, which checkpoints every epoch and resumes."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from transferline.checkpoint import load_checkpoint, read_meta, save_checkpoint
from transferline.config import TrainParams

log = logging.getLogger(__name__)


def fingerprint(**parts: Any) -> str:
    """A short hash of what makes a checkpoint resumable (config + data shape)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_one_epoch(
    model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, scheduler: Any, device: torch.device
) -> tuple[float, float]:
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    total, loss_sum, correct = 0, 0.0, 0
    for x, y in loader:
        x, y = x.to(device, torch.float32), y.to(device)
        logits = model(x)
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += len(y)
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
    return loss_sum / total, correct / total


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Logits for x, (N, classes), on the CPU."""
    model.eval()
    out = [model(x[i : i + batch_size].to(device, torch.float32)).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device) -> tuple[float, float]:
    """(loss, accuracy) of model on x, y."""
    logits = predict(model, x, batch_size, device)
    loss = nn.functional.cross_entropy(logits, y).item()
    return loss, (logits.argmax(1) == y).float().mean().item()


def fit(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    cfg: TrainParams,
    device: torch.device,
    generator: torch.Generator,
    checkpoint: str | Path | None = None,
    desc: str = "train",
) -> list[dict[str, float]]:
    """Train with AdamW and a cosine schedule; return per-epoch history.

    With `checkpoint`, state is saved after every epoch and a matching earlier
    checkpoint (same config and data) is resumed instead of restarting; it is
    removed once training finishes.
    """
    model.to(device)
    loader = DataLoader(TensorDataset(*train), batch_size=cfg.batch_size, shuffle=True, generator=generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * len(loader), pct_start=0.1
    )
    # Same config and same data (shape and a checksum) or no resume.
    key = fingerprint(cfg=cfg.model_dump(), shape=list(train[0].shape), data=float(train[0].float().sum()),
                      labels=int(train[1].sum()), desc=desc)
    history: list[dict[str, float]] = []
    start = 0
    if checkpoint and Path(checkpoint).exists():
        try:
            saved = read_meta(checkpoint).get("state", {})
        except Exception as err:  # a truncated or foreign file: start over, say so
            log.warning("ignoring unreadable checkpoint %s (%s)", checkpoint, err)
            saved = {}
        if saved.get("fingerprint") == key:
            state = load_checkpoint(checkpoint, model, optimizer, scheduler)
            start, history = state["epoch"], state["history"]
            torch.set_rng_state(torch.tensor(state["rng"], dtype=torch.uint8))
            generator.set_state(torch.tensor(state["gen"], dtype=torch.uint8))
            log.info("resuming %s from epoch %d of %d (%s)", desc, start, cfg.epochs, checkpoint)
        else:
            log.info("checkpoint %s was made with other settings or data; training from the start", checkpoint)
    bar = tqdm(range(start, cfg.epochs), desc=desc, unit="epoch", initial=start, total=cfg.epochs,
               mininterval=0.5 if sys.stderr.isatty() else 30)
    for epoch in bar:
        t0 = time.perf_counter()
        train_loss, train_acc = train_one_epoch(model, loader, optimizer, scheduler, device)
        val_loss, val_acc = evaluate(model, *val, batch_size=512, device=device)
        row = {
            "epoch": epoch + 1,
            "train_loss": round(train_loss, 5),
            "train_acc": round(train_acc, 5),
            "val_loss": round(val_loss, 5),
            "val_acc": round(val_acc, 5),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        history.append(row)
        bar.set_postfix(loss=f"{train_loss:.3f}", val_acc=f"{val_acc:.3f}")
        if checkpoint:
            state = {
                "fingerprint": key,
                "epoch": epoch + 1,
                "history": history,
                "rng": torch.get_rng_state().tolist(),
                "gen": generator.get_state().tolist(),
            }
            save_checkpoint(checkpoint, model, optimizer, scheduler, state)
    if checkpoint:
        # Done: the stage's output is the final weights; a leftover resume
        # point could only be mistaken for work still to do.
        Path(checkpoint).unlink(missing_ok=True)
    return history
