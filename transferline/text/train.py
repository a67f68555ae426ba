"""The classifier loop for text: `fit_classifier` (AdamW, linear warm-up/decay,
best validation weights kept). Batches are cut to the longest real sequence
in them (models.trim, `length_grouped`): padding costs nothing. The
masked-LM loop in objectives.py batches the same way.

Under torchrun every rank draws the same global batches and trains on its
slice of each (transferline.distributed), through a DDP wrapper; on a GPU
the steps run under bf16 autocast with the token ids kept on the device."""

from __future__ import annotations

import logging
import math
import time

import torch
from torch import nn
from tqdm import tqdm

from transferline import distributed as dist
from transferline.runtime import autocast, keep_freed_memory, place
from transferline.errors import check_finite_loss
from transferline.text.models import predict_logits, trim
from transferline.text.strategies import warmup_linear

log = logging.getLogger(__name__)


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


def fit_classifier(model: nn.Module, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                   groups: list[dict], epochs: int, batch_size: int, warmup_fraction: float, pad_id: int,
                   device: torch.device, generator: torch.Generator, max_steps: int = 0,
                   desc: str = "finetune") -> list[dict]:
    """Train with AdamW + linear warm-up/decay; evaluate on val each epoch; keep the best weights."""
    keep_freed_memory()  # each step's freed activations reused by the next, not faulted in again
    model.to(device)
    ddp = dist.wrap(model, device)  # the strategy froze what it freezes before this: one wrapper for the run
    world = dist.world_size()
    opt = torch.optim.AdamW(groups)
    x_train, y_train = place({"x": train[0], "y": train[1]}, device).values()
    per_epoch = math.ceil(len(x_train) / batch_size)
    total = per_epoch * epochs if not max_steps else min(per_epoch * epochs, max_steps)
    sched = warmup_linear(opt, int(warmup_fraction * total), total)
    loss_fn = nn.CrossEntropyLoss()
    history, best, best_state, step = [], -1.0, None, 0
    lengths = (x_train != pad_id).sum(1).cpu()
    for epoch in range(1, epochs + 1):
        ddp.train()
        # global batches: the same on every rank (same generator); each rank trains on its slice
        batches = length_grouped(torch.randperm(len(x_train), generator=generator), lengths, batch_size, generator)
        # the loss is summed on the device: a per-step .item() would wait for every step (a host sync)
        t0, running, seen = time.perf_counter(), torch.zeros((), dtype=torch.float64, device=device), 0
        for idx in tqdm(batches, desc=f"{desc} epoch {epoch}", leave=False, disable=not dist.is_main()):
            if max_steps and step >= max_steps:
                break
            if len(idx) < world:  # a step needs every rank
                continue
            idx = dist.local_part(idx)
            x, attn = trim(x_train[idx], pad_id)
            with autocast(device):
                loss = loss_fn(ddp(input_ids=x.to(device), attention_mask=attn.to(device)), y_train[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # gradients are averaged already: the same clip on all ranks
            opt.step()
            sched.step()
            running += loss.detach().double() * len(idx)
            seen += len(idx)
            step += 1
        running, seen = dist.sum_all([float(running), seen])  # one sync per epoch
        check_finite_loss(running / max(seen, 1), f"{desc} epoch {epoch}", step)
        train_seconds = time.perf_counter() - t0
        logits = predict_logits(model, val[0], pad_id, batch_size * 4, device)
        val_loss = float(loss_fn(logits, val[1]))
        val_acc = float((logits.argmax(1) == val[1]).float().mean())
        history.append({"epoch": epoch, "train_loss": round(running / max(seen, 1), 5), "val_loss": round(val_loss, 5),
                        "val_acc": round(val_acc, 5), "train_seconds": round(train_seconds, 1),
                        "world_size": world})
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
