"""Masked-LM pretraining of the text encoder: BERT masking (`mask_tokens`), the
loss over masked positions only (`mlm_loss`), held-out masked-token accuracy
(`mlm_evaluate`) and the loop (`pretrain_mlm`), which checkpoints every
`eval_every` steps and resumes from the checkpoint. The pretrain stage calls
`pretrain_mlm`; the encoder it returns is what finetune starts from.

The ids stay on the CPU, where the seeded masking draws; each batch is copied
to the device. Under torchrun every rank masks the same global batch (same generator, so
the ranks never drift apart) and trains on its slice of it through DDP; the
step's loss is the mean of the ranks' masked-token means."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm
from transformers import BertConfig, BertForMaskedLM

from transferline import distributed as dist
from transferline.checkpoint import load_checkpoint, save_checkpoint
from transferline.runtime import autocast, keep_freed_memory
from transferline.errors import check_finite_loss
from transferline.text.models import trim
from transferline.text.strategies import warmup_linear
from transferline.text.train import length_grouped

log = logging.getLogger(__name__)


def mlm_loss(model: BertForMaskedLM, inputs: torch.Tensor, attn: torch.Tensor,
             labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-entropy over the masked positions only: the vocabulary projection runs on
    ~15% of the tokens instead of all. Returns (loss, predictions, targets)."""
    hidden = model.bert(input_ids=inputs, attention_mask=attn).last_hidden_state  # (B, L, H)
    chosen = labels != -100
    logits = model.cls(hidden[chosen])  # (M, V)
    targets = labels[chosen]
    return nn.functional.cross_entropy(logits, targets), logits.argmax(-1), targets


def mask_tokens(ids: torch.Tensor, attn: torch.Tensor, special: dict[str, int], vocab_size: int, prob: float,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: of `prob` of the real tokens, 80% [MASK], 10% random, 10% kept; labels -100 elsewhere."""
    labels = ids.clone()
    candidates = attn.bool() & (ids != special["[CLS]"]) & (ids != special["[SEP]"])
    chosen = (torch.rand(ids.shape, generator=generator) < prob) & candidates
    labels[~chosen] = -100
    inputs = ids.clone()
    roll = torch.rand(ids.shape, generator=generator)
    inputs[chosen & (roll < 0.8)] = special["[MASK]"]
    random_pos = chosen & (roll >= 0.8) & (roll < 0.9)
    inputs[random_pos] = torch.randint(len(special), vocab_size, ids.shape, generator=generator)[random_pos]
    return inputs, labels


@torch.inference_mode()
def mlm_evaluate(model: BertForMaskedLM, ids: torch.Tensor, special: dict[str, int], vocab_size: int, prob: float,
                 batch_size: int, device: torch.device, seed: int) -> tuple[float, float]:
    """(loss, masked-token accuracy) on held-out text, with a fixed masking."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    total_loss, correct, n = 0.0, 0, 0
    for start in range(0, len(ids), batch_size):
        x, attn = trim(ids[start : start + batch_size], special["[PAD]"])
        inputs, labels = mask_tokens(x, attn, special, vocab_size, prob, g)
        loss, pred, target = mlm_loss(model, inputs.to(device), attn.to(device), labels.to(device))
        total_loss += float(loss) * len(target)
        correct += int((pred == target).sum())
        n += len(target)
    model.train()
    return total_loss / max(n, 1), correct / max(n, 1)


class _MLMLoss(nn.Module):
    """mlm_loss as a module's forward, so DDP can wrap it (DDP reduces only through its forward)."""

    def __init__(self, model: BertForMaskedLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, attn: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return mlm_loss(self.model, inputs, attn, labels)[0]


def _local_rows(inputs: torch.Tensor, attn: torch.Tensor,
                labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's rows of a masked global batch, cut to their own longest text."""
    rows = dist.local_part(torch.arange(len(inputs)))
    inputs, attn, labels = inputs[rows], attn[rows], labels[rows]
    length = max(int(attn.sum(1).max()), 1)
    return inputs[:, :length], attn[:, :length], labels[:, :length]


class _NoTiedCopies(nn.Module):
    """A view of a model for checkpoint.py whose state dict holds each tied tensor once
    (safetensors refuses shared memory; BERT ties the MLM decoder to the embeddings)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = model
        seen: dict[int, str] = {}
        self.tied = []
        for name, tensor in model.state_dict(keep_vars=True).items():
            if tensor.data_ptr() in seen:
                self.tied.append(name)
            seen.setdefault(tensor.data_ptr(), name)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict:  # type: ignore[override]
        return {k: v for k, v in self.inner.state_dict().items() if k not in self.tied}

    def load_state_dict(self, state: dict, strict: bool = True, assign: bool = False) -> Any:  # type: ignore[override]
        result = self.inner.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if k not in self.tied]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"checkpoint does not fit: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")
        return result


def new_mlm(config: BertConfig, seed: int) -> BertForMaskedLM:
    """A BERT masked-LM with seeded random weights (under torchrun every rank builds the same)."""
    torch.manual_seed(seed)
    return BertForMaskedLM(config)


def load_pretrained_mlm(folder: Path) -> BertForMaskedLM:
    """A BERT masked-LM from a local model folder, for continued pretraining: safetensors
    only, no remote code. A sentence-embedding folder (all-MiniLM-L6-v2) has no MLM head:
    its transform layer starts from random, its decoder is tied to the word embeddings."""
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}/config.json not found; a model folder needs config.json and model.safetensors")
    config = BertConfig.from_pretrained(str(folder), local_files_only=True)
    if config.model_type != "bert":
        raise ValueError(f"{folder}: model_type {config.model_type!r}; only BERT-style encoders are supported")
    import transformers

    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the missing MLM head is expected, not news
    try:
        return BertForMaskedLM.from_pretrained(str(folder), config=config, local_files_only=True,
                                               use_safetensors=True, trust_remote_code=False)
    finally:
        transformers.logging.set_verbosity(level)


def pretrain_mlm(model: BertForMaskedLM, ids: torch.Tensor, special: dict[str, int], cfg: Any, device: torch.device,
                 seed: int, checkpoint: Path) -> tuple[BertForMaskedLM, list[dict]]:
    """Masked-LM (pre)training of `model` (random, or a pretrained encoder to continue) for
    cfg.steps steps; checkpoint every cfg.eval_every steps; resumes from `checkpoint` if it
    exists (same config). Returns the model and the history."""
    keep_freed_memory()  # each step's freed activations reused by the next, not faulted in again
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(ids), generator=g)
    n_val = max(1, int(len(ids) * cfg.val_fraction))
    val_ids, train_ids = ids[perm[:n_val]], ids[perm[n_val:]]
    config = model.config
    model = model.to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "LayerNorm" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "LayerNorm" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    sched = warmup_linear(opt, min(cfg.warmup_steps, cfg.steps // 2), cfg.steps)
    step, history, seconds = 0, [], 0.0
    resumable = checkpoint.is_file()
    if dist.from_main(resumable) != resumable:
        raise RuntimeError(f"rank {dist.rank()} sees another resume point than rank 0 in {checkpoint}; with several "
                           "machines the models folder must be shared, or delete the checkpoint to start over")
    if resumable:
        try:
            state = load_checkpoint(checkpoint, _NoTiedCopies(model), opt, sched)
        except (RuntimeError, KeyError, ValueError) as err:
            log.warning("ignoring %s (does not fit this config: %s); starting over", checkpoint, str(err)[:200])
        else:
            step, history, seconds = state["step"], state["history"], state.get("seconds", 0.0)
            g.set_state(torch.tensor(state["rng"], dtype=torch.uint8))
            log.info("resuming masked-LM pretraining at step %d of %d", step, cfg.steps)
    lengths = (train_ids != special["[PAD]"]).sum(1)
    per_epoch = max(1, math.ceil(len(train_ids) / cfg.batch_size))
    batches = length_grouped(torch.randperm(len(train_ids), generator=g), lengths, cfg.batch_size, g)
    ddp = dist.wrap(_MLMLoss(model), device)
    world = dist.world_size()
    model.train()
    bar = tqdm(total=cfg.steps, initial=step, desc="pretrain (masked LM)", leave=False, disable=not dist.is_main())
    running, t0 = 0.0, time.perf_counter()
    while step < cfg.steps:
        if step % per_epoch == 0 and step:
            batches = length_grouped(torch.randperm(len(train_ids), generator=g), lengths, cfg.batch_size, g)
        x, attn = trim(train_ids[batches[step % per_epoch]], special["[PAD]"])
        inputs, labels = mask_tokens(x, attn, special, config.vocab_size, cfg.mask_prob, g)  # the global batch
        if world > 1:
            inputs, attn, labels = _local_rows(inputs, attn, labels)
        with autocast(device):
            loss = ddp(inputs.to(device, non_blocking=True), attn.to(device, non_blocking=True),
                       labels.to(device, non_blocking=True))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        running += loss.item()
        bar.update(1)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            running = dist.sum_all([running])[0] / world
            val_loss, val_acc = mlm_evaluate(model, val_ids, special, config.vocab_size, cfg.mask_prob,
                                             cfg.batch_size * 2, device, seed)
            seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            since = step - (history[-1]["step"] if history else 0)
            check_finite_loss(running / since, "masked-LM pretraining", step)
            history.append({"epoch": round(step / per_epoch, 3), "step": step, "train_loss": round(running / since, 5),
                            "val_loss": round(val_loss, 5), "val_acc": round(val_acc, 5), "seconds": round(seconds, 1),
                            "world_size": world})
            running = 0.0
            log.info("step %d: train loss %.3f, val loss %.3f, masked-token accuracy %.3f",
                     step, history[-1]["train_loss"], val_loss, val_acc)
            if dist.is_main():
                save_checkpoint(checkpoint, _NoTiedCopies(model), opt, sched,
                                {"step": step, "history": history, "seconds": seconds, "rng": g.get_state().tolist()})
    bar.close()
    return model, history
