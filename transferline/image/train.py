"""The training loop shared by pretrain and finetune: `train_one_epoch`,
`evaluate`, and `fit`, which checkpoints every epoch and resumes.

Under torchrun every rank runs `fit` on its slice of each global batch
(transferline.distributed); only rank 0 writes the checkpoint. On a GPU the
batches run under bf16 autocast, channels_last, with the data kept on the
device when it fits (transferline.runtime); on a CPU none of that applies.
A training set passed as CachedRows ({pretrain,finetune}.image.loader_workers)
is read from its cache file a batch at a time by DataLoader worker processes."""

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

from transferline import distributed as dist
from transferline.checkpoint import load_checkpoint, load_weights, resume_state, save_epoch, save_state_dict
from transferline.config.image import TrainParams
from transferline.errors import check_finite_loss
from transferline.image.data import CachedRows
from transferline.image.models import predict
from transferline.image.strategies import param_groups, set_batchnorm_training, unfreeze_for_epoch, warmup_cosine
from transferline.runtime import autocast, keep_freed_memory, memory_format, place

log = logging.getLogger(__name__)


def fingerprint(**parts: Any) -> str:
    """A short hash of what makes a checkpoint resumable (config + data shape)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def augmenter() -> Any:
    """Small random shifts, rotations and zooms: label-preserving for 28x28 shapes."""
    from torchvision.transforms import v2  # torchvision costs seconds to import; only when asked

    return v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))


def background(x: torch.Tensor) -> torch.Tensor:
    """Each image's background colour, (N, C, 1, 1): the median of its border pixels per channel
    (a photo's backdrop; on MNIST-like sets the darkest value, as every image there is dark at the edge)."""
    edge = torch.cat([x[..., 0, :], x[..., -1, :], x[..., 1:-1, 0], x[..., 1:-1, -1]], dim=-1)
    return edge.median(dim=-1).values[..., None, None]


def augmented(x: torch.Tensor, augment: Any) -> torch.Tensor:
    """Each image its own random transform, the area it uncovers filled with the image's background
    (0, torchvision's fill, after the shift): the darkest value as fill drew a frame of another
    colour around every coloured photo (synthetic RGB shapes on coloured backdrops, 3 seeds:
    validation 0.70 -> 0.76; bit-identical on the built-in sets, dark at every edge)."""
    bg = background(x)
    return torch.stack([augment(img) for img in x - bg]) + bg


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    device: torch.device,
    label_smoothing: float = 0.0,
    augment: Any = None,
    train_bn: bool = True,
) -> tuple[float, float]:
    model.train()
    set_batchnorm_training(dist.unwrap(model), train_bn)  # model.train() just reset frozen BN layers
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    fmt = memory_format(device)
    # summed on the device (no sync per step on a GPU), in float64 as the Python floats were
    total, sums = 0, torch.zeros(2, dtype=torch.float64, device=device)  # loss x images, correct
    for x, y in loader:
        x, y = x.to(device, torch.float32, non_blocking=True), y.to(device, non_blocking=True)
        if augment is not None:
            x = augmented(x, augment)
        if fmt is not torch.contiguous_format:
            x = x.contiguous(memory_format=fmt)
        with autocast(device):
            logits = model(x)
            loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += len(y)
        sums += torch.stack([loss.detach().double() * len(y), (logits.argmax(1) == y).sum().double()])
    total, loss_sum, correct = dist.sum_all([total, *sums.tolist()])  # every rank's share of the epoch
    return loss_sum / total, correct / total


def worker_context() -> Any:
    """Loader workers forked from a clean forkserver that has imported torch, not from this
    process: a process that ran a Prefect flow holds exit hooks that fail in a forked copy (the
    copy exits 1 once its work is done, and the DataLoader reports a dead worker)."""
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "transferline.image.data"])
    return context


class StreamedSet(torch.utils.data.Dataset):
    """(images, labels) of a list of indices: the images read from the cache file, the labels in memory."""

    def __init__(self, x: CachedRows, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[rows], self.y[rows]


def loss_and_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device) -> tuple[float, float]:
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
    """Train with AdamW, warm-up + cosine; return per-epoch history.

    A FinetuneParams `cfg` also picks the strategy (which blocks train, at
    which lr; see transferline.image.strategies). With `patience`, training stops
    after that many epochs without a better val accuracy and the best
    weights are kept. With `checkpoint`, state is saved after every epoch
    and a matching earlier checkpoint (same config and data) is resumed
    instead of restarting; it is removed once training finishes.
    """
    keep_freed_memory()  # each step's freed activations reused by the next, not faulted in again
    strategy = getattr(cfg, "strategy", "full")
    train_bn = getattr(cfg, "train_bn", True)
    world = dist.world_size()
    model.to(device)  # channels-last already: models.build_model
    streamed = isinstance(train[0], CachedRows)
    workers = getattr(cfg, "loader_workers", 0) if streamed else 0
    # In memory: one TensorDataset (on the GPU when it fits). Streamed: workers read each batch's
    # rows from the cache file while the model trains on the previous ones; they start anew each
    # epoch (not persistent_workers), so every epoch draws from `generator` as in memory: same shuffle.
    dataset = StreamedSet(*train) if streamed else TensorDataset(*place({"x": train[0], "y": train[1]}, device).values())
    # this rank's slice of each global batch of cfg.batch_size (one rank: DataLoader's own shuffle)
    loader = DataLoader(dataset, sampler=dist.global_batches(len(train[1]), cfg.batch_size, generator),
                        batch_size=None, generator=generator, num_workers=workers,
                        multiprocessing_context=worker_context() if workers else None,
                        pin_memory=streamed and device.type == "cuda")
    groups = param_groups(model, strategy, cfg.lr, getattr(cfg, "last_n_blocks", 1), getattr(cfg, "lr_decay", 0.5))
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # Same config and same data (shape and a checksum) or no resume.
    key = fingerprint(cfg=cfg.model_dump(), shape=list(train[0].shape), labels=int(train[1].sum()), desc=desc,
                      data=train[0].identity if streamed else float(train[0].float().sum()))
    history: list[dict[str, float]] = []
    start, best_acc, best_state = 0, -1.0, None
    saved = resume_state(checkpoint, key)
    if dist.from_main(saved.get("epoch", 0)) != saved.get("epoch", 0):
        raise RuntimeError(f"rank {dist.rank()} sees another resume point than rank 0 in {checkpoint}; with several "
                           "machines the models folder must be shared, or delete the checkpoint to start over")
    if saved and strategy == "gradual":
        # the optimizer needs the saved number of groups before loading into it
        unfreeze_for_epoch(model, optimizer, saved["epoch"] - 1, cfg.unfreeze_every)  # type: ignore[attr-defined]
    warmup = cfg.warmup_epochs * len(loader)
    scheduler = warmup_cosine(optimizer, min(warmup, cfg.epochs * len(loader)), cfg.epochs * len(loader))
    if saved:
        state = load_checkpoint(checkpoint, model, optimizer, scheduler)
        start, history = state["epoch"], state["history"]
        best_acc = max(r["val_acc"] for r in history)
        torch.set_rng_state(torch.tensor(state["rng"], dtype=torch.uint8))
        generator.set_state(torch.tensor(state["gen"], dtype=torch.uint8))
        if Path(checkpoint).with_suffix(".best").exists():
            best_state = load_weights(Path(checkpoint).with_suffix(".best"))
        log.info("resuming %s from epoch %d of %d (%s)", desc, start, cfg.epochs, checkpoint)
    augment = augmenter() if cfg.augment else None
    stale = 0
    ddp = dist.Rewrapper(model, device)  # a new DDP wrapper whenever gradual unfreezing changes what trains
    bar = tqdm(range(start, cfg.epochs), desc=desc, unit="epoch", initial=start, total=cfg.epochs,
               mininterval=0.5 if sys.stderr.isatty() else 30, disable=not dist.is_main())
    for epoch in bar:
        t0 = time.perf_counter()
        if strategy == "gradual":
            unfreeze_for_epoch(model, optimizer, epoch, cfg.unfreeze_every, scheduler)  # type: ignore[attr-defined]
        train_loss, train_acc = train_one_epoch(
            ddp(), loader, optimizer, scheduler, device, cfg.label_smoothing, augment, train_bn
        )
        dist.sync_buffers(model)  # every rank evaluates (and rank 0 saves) rank 0's batch-norm statistics
        check_finite_loss(train_loss, f"{desc} epoch {epoch + 1}", (epoch + 1) * len(loader))
        val_loss, val_acc = loss_and_accuracy(model, *val, batch_size=512, device=device)
        row = {
            "epoch": epoch + 1,
            "train_loss": round(train_loss, 5),
            "train_acc": round(train_acc, 5),
            "val_loss": round(val_loss, 5),
            "val_acc": round(val_acc, 5),
            "lr": round(optimizer.param_groups[0]["lr"], 8),
            "seconds": round(time.perf_counter() - t0, 3),
            "world_size": world,
        }
        history.append(row)
        bar.set_postfix(loss=f"{train_loss:.3f}", val_acc=f"{val_acc:.3f}", refresh=False)
        if val_acc > best_acc:
            best_acc, stale = val_acc, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            if checkpoint and cfg.patience and dist.is_main():
                save_state_dict(best_state, Path(checkpoint).with_suffix(".best"))
        else:
            stale += 1
        if checkpoint and dist.is_main():
            save_epoch(checkpoint, model, optimizer, scheduler, key, history, generator)
        # decided once, by rank 0, and obeyed by all (a rank leaving alone would hang the others)
        if dist.from_main(bool(cfg.patience and stale >= cfg.patience)):
            log.info("%s: early stop after epoch %d (best val accuracy %.4f)", desc, epoch + 1, best_acc)
            break
    bar.close()
    finish(model, best_state if cfg.patience else None, checkpoint)
    return history


def finish(model: nn.Module, best_state: dict | None, checkpoint: str | Path | None) -> None:
    """End of a fit (supervised or self-supervised): keep the best weights if early stopping
    tracked them, and drop the resume point (rank 0)."""
    if best_state is not None:
        model.load_state_dict(best_state)
    if checkpoint and dist.is_main():
        # Done: the stage's output is the final weights; a leftover resume
        # point could only be mistaken for work still to do.
        Path(checkpoint).unlink(missing_ok=True)
        Path(checkpoint).with_suffix(".best").unlink(missing_ok=True)
