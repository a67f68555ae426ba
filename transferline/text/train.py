"""The classifier loop for text: `fit_classifier` (AdamW, linear warm-up/decay,
best validation weights kept) and `predict_logits`. Batches are cut to the
longest real sequence in them (`trim`, `length_grouped`): padding costs
nothing. The masked-LM loop in objectives.py batches the same way."""

from __future__ import annotations

import logging
import math
import time

import torch
from torch import nn
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

log = logging.getLogger(__name__)


def set_threads(n: int) -> None:
    """On a shared CPU one thread can be several times faster than two fighting for cores."""
    if n:
        torch.set_num_threads(n)


def trim(ids: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask) as int64, without the all-padding tail columns."""
    mask = ids != pad_id
    length = max(int(mask.sum(1).max()), 1)
    return ids[:, :length].long(), mask[:, :length].long()


def length_grouped(order: torch.Tensor, lengths: torch.Tensor, batch_size: int, generator: torch.Generator,
                   chunk: int = 50) -> list[torch.Tensor]:
    """Batches of similar length (sorted within chunks of `chunk` batches, batch order shuffled):
    with `trim`, a batch costs its own longest text, not max_length."""
    batches: list[torch.Tensor] = []
    for start in range(0, len(order), batch_size * chunk):
        part = order[start : start + batch_size * chunk]
        part = part[torch.argsort(lengths[part], descending=True, stable=True)]
        batches += list(part.split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


@torch.inference_mode()
def predict_logits(model: nn.Module, ids: torch.Tensor, pad_id: int, batch_size: int, device: torch.device) -> torch.Tensor:
    model.eval()
    # longest first, so each batch is trimmed to texts of similar length; then back to input order
    by_length = torch.argsort((ids != pad_id).sum(1), descending=True, stable=True)
    out = []
    for start in range(0, len(ids), batch_size):
        x, attn = trim(ids[by_length[start : start + batch_size]], pad_id)
        out.append(model(input_ids=x.to(device), attention_mask=attn.to(device)).float().cpu())
    if not out:
        return torch.zeros(0)
    logits = torch.empty_like(torch.cat(out))
    logits[by_length] = torch.cat(out)
    return logits


def fit_classifier(model: nn.Module, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                   groups: list[dict], epochs: int, batch_size: int, warmup_fraction: float, pad_id: int,
                   device: torch.device, generator: torch.Generator, max_steps: int = 0,
                   desc: str = "finetune") -> list[dict]:
    """Train with AdamW + linear warm-up/decay; evaluate on val each epoch; keep the best weights."""
    model.to(device)
    opt = torch.optim.AdamW(groups)
    x_train, y_train = train
    per_epoch = math.ceil(len(x_train) / batch_size)
    total = per_epoch * epochs if not max_steps else min(per_epoch * epochs, max_steps)
    sched = get_linear_schedule_with_warmup(opt, int(warmup_fraction * total), total)
    loss_fn = nn.CrossEntropyLoss()
    history, best, best_state, step = [], -1.0, None, 0
    lengths = (x_train != pad_id).sum(1)
    for epoch in range(1, epochs + 1):
        model.train()
        batches = length_grouped(torch.randperm(len(x_train), generator=generator), lengths, batch_size, generator)
        t0, running, seen = time.perf_counter(), 0.0, 0
        for idx in tqdm(batches, desc=f"{desc} epoch {epoch}", leave=False):
            if max_steps and step >= max_steps:
                break
            x, attn = trim(x_train[idx], pad_id)
            loss = loss_fn(model(input_ids=x.to(device), attention_mask=attn.to(device)), y_train[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            running += loss.item() * len(idx)
            seen += len(idx)
            step += 1
        train_seconds = time.perf_counter() - t0
        logits = predict_logits(model, val[0], pad_id, batch_size * 4, device)
        val_loss = float(loss_fn(logits, val[1]))
        val_acc = float((logits.argmax(1) == val[1]).float().mean())
        history.append({"epoch": epoch, "train_loss": round(running / max(seen, 1), 5), "val_loss": round(val_loss, 5),
                        "val_acc": round(val_acc, 5), "train_seconds": round(train_seconds, 1)})
        log.info("%s epoch %d: train loss %.4f, val accuracy %.4f (%.0f s)", desc, epoch,
                 history[-1]["train_loss"], val_acc, train_seconds)
        if val_acc > best:
            best = val_acc
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if max_steps and step >= max_steps:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return history
