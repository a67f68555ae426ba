"""Self-supervised image pretraining: learn a backbone without labels.

Two objectives, picked by `pretrain.objective`:

* denoising: a masked/noisy image goes through the backbone (to its pooled
  feature vector) and a small decoder, which reconstructs the clean image
  (mean squared error). Masking blanks a share `mask_ratio` of 4x4 patches
  to the background; `noise_std` adds gaussian noise.
* contrastive: SimCLR. Two torchvision v2 augmented views of every image
  (random resized crop, flip, small rotation, blur, contrast), a projection
  MLP, and the NT-Xent loss at `temperature`: each view must pick its twin
  among the other 2N-2 views of the batch.

The training data is the unlabelled pool (`pretrain.unlabelled`): source
training images with their labels dropped and/or the target images that the
split left out of train, val and test. Labels are used only to *monitor*:
`val_acc` in the history is the k-nearest-neighbour accuracy of the
backbone's features on the source validation set (neighbours from source
training images), so a run's features can be compared across epochs and
objectives. Checkpoints, resume, data-parallel ranks and the GPU path work
as in `transferline.image.train.fit`. With several ranks the contrastive
negatives of a view are the other views of its own rank's slice of the
global batch (no all-gather), as in plain SimCLR-on-DDP setups.
The saved weights hold the backbone alone (`backbone.*` keys), which
`finetune` loads exactly like a supervised backbone.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from transferline import distributed as dist
from transferline.checkpoint import load_checkpoint, load_weights, resume_state, save_epoch, save_weights
from transferline.errors import check_finite_loss
from transferline.image.strategies import warmup_cosine
from transferline.image.models import build_model
from transferline.image.train import background, fingerprint, finish
from transferline.runtime import autocast, keep_freed_memory, memory_format, place

log = logging.getLogger(__name__)

OBJECTIVES = ("denoising", "contrastive")
PATCH = 4  # denoising mask granularity (pixels)
KNN_REFERENCE = 5000  # source training images the kNN monitor compares against


class Encoder(nn.Module):
    """Just the backbone, so the saved keys are `backbone.*` like a classifier's."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone


def decoder(feature_dim: int, channels: int, image_size: int) -> nn.Sequential:
    """Pooled features (N, feature_dim) -> image (N, channels, image_size, image_size)."""
    side = max(1, math.ceil(image_size / 4))
    return nn.Sequential(
        nn.Linear(feature_dim, 64 * side * side),
        nn.ReLU(inplace=True),
        nn.Unflatten(1, (64, side, side)),
        nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(inplace=True),
        nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(inplace=True),
        nn.Conv2d(16, channels, 3, padding=1),
        nn.Upsample(size=(image_size, image_size), mode="bilinear", align_corners=False),
    )


class SSLModel(nn.Module):
    """backbone + decoder (denoising) or projection head (contrastive)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, objective: str, channels: int, image_size: int) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"pretrain.objective: {objective!r} is not self-supervised; choose {OBJECTIVES}")
        self.backbone = backbone
        self.objective = objective
        if objective == "denoising":
            self.decoder = decoder(feature_dim, channels, image_size)
        else:
            self.projector = nn.Sequential(
                nn.Linear(feature_dim, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Linear(256, 128)
            )

    def forward(self, x: torch.Tensor, cfg: Any, transform: Any) -> torch.Tensor:
        """The objective's loss on a batch (a forward DDP can wrap)."""
        return ssl_loss(self, x, cfg, transform)


def corrupt(x: torch.Tensor, mask_ratio: float, noise_std: float) -> torch.Tensor:
    """Blank a share of PATCHxPATCH patches to each image's background, then add noise."""
    n, _, h, w = x.shape
    lo = background(x)
    grid = torch.rand(n, 1, math.ceil(h / PATCH), math.ceil(w / PATCH), device=x.device) < mask_ratio
    mask = grid.repeat_interleave(PATCH, 2).repeat_interleave(PATCH, 3)[:, :, :h, :w]
    out = torch.where(mask, lo, x)
    return out + noise_std * torch.randn_like(out) if noise_std else out


def view_transform(image_size: int) -> Any:
    """SimCLR's view augmentation for small greyscale images (torchvision v2)."""
    from torchvision.transforms import v2  # costs seconds to import; only when asked

    return v2.Compose([
        v2.RandomResizedCrop(image_size, scale=(0.35, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomAffine(degrees=15),
        v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 1.0))], p=0.5),
    ])


def two_views(x: torch.Tensor, transform: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent augmented views of every image (each image its own draw)."""
    lo = background(x)
    z = x - lo  # background at 0, the fill value of the geometric transforms

    def view() -> torch.Tensor:
        v = torch.stack([transform(img) for img in z])
        contrast = torch.empty(len(x), 1, 1, 1, device=x.device).uniform_(0.6, 1.4)
        return v * contrast + lo

    return view(), view()


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalised-temperature cross entropy over the 2N views of a batch."""
    n = len(z1)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = (z @ z.T) / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, targets)


def ssl_loss(model: SSLModel, x: torch.Tensor, cfg: Any, transform: Any) -> torch.Tensor:
    if model.objective == "denoising":
        return F.mse_loss(model.decoder(model.backbone(corrupt(x, cfg.mask_ratio, cfg.noise_std))), x)
    v1, v2 = two_views(x, transform)
    z = model.projector(model.backbone(torch.cat([v1, v2])))
    return nt_xent(z[: len(x)], z[len(x):], cfg.temperature)


@torch.inference_mode()
def features(backbone: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 512) -> torch.Tensor:
    backbone.eval()
    out = [backbone(x[i : i + batch_size].to(device, torch.float32)).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out)


def knn_accuracy(
    backbone: nn.Module, ref: tuple[torch.Tensor, torch.Tensor], query: tuple[torch.Tensor, torch.Tensor],
    device: torch.device, k: int = 20,
) -> float:
    """Accuracy of a cosine k-nearest-neighbour vote on the backbone's features (monitor only)."""
    f_ref = F.normalize(features(backbone, ref[0], device), dim=1)
    f_q = F.normalize(features(backbone, query[0], device), dim=1)
    sim, idx = (f_q @ f_ref.T).topk(min(k, len(f_ref)), dim=1)
    n_classes = int(max(ref[1].max(), query[1].max())) + 1
    votes = torch.zeros(len(f_q), n_classes).scatter_add_(1, ref[1][idx], (sim / 0.07).exp())
    return (votes.argmax(1) == query[1]).float().mean().item()


@torch.no_grad()
def val_loss(model: SSLModel, x: torch.Tensor, cfg: Any, transform: Any, device: torch.device) -> float:
    """The objective's loss on held-out images, with fixed random draws (comparable across epochs)."""
    model.eval()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        losses = [ssl_loss(model, x[i : i + cfg.batch_size].to(device, torch.float32), cfg, transform).item()
                  for i in range(0, len(x) - 1, cfg.batch_size)]  # -1: never a batch of one view pair
    return float(sum(losses) / max(len(losses), 1))


def fit_ssl(
    model: SSLModel,
    train: torch.Tensor,
    val: torch.Tensor,
    monitor: tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    cfg: Any,
    device: torch.device,
    generator: torch.Generator,
    checkpoint: str | Path | None = None,
    desc: str = "pretrain",
) -> list[dict[str, float]]:
    """Train `model` on unlabelled images with AdamW + warm-up/cosine; per-epoch history.

    Like `training.fit`: state saved after every epoch to `checkpoint`, a
    matching earlier checkpoint (same config and data) resumed, removed when
    done; with `patience`, stops when val loss stops improving and keeps the
    best weights.
    """
    keep_freed_memory()  # each step's freed activations reused by the next, not faulted in again
    model.to(device)  # channels-last already: models.build_model
    # drop_last: a last batch of one image has no negatives and breaks batch norm
    loader = DataLoader(TensorDataset(place({"x": train}, device)["x"]), batch_size=None, generator=generator,
                        sampler=dist.global_batches(len(train), cfg.batch_size, generator,
                                                    drop_last=len(train) > cfg.batch_size))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * len(loader)
    scheduler = warmup_cosine(optimizer, min(cfg.warmup_epochs * len(loader), steps), steps)
    key = fingerprint(cfg=cfg.model_dump(), shape=list(train.shape), data=float(train.float().sum()), desc=desc)
    transform = view_transform(train.shape[-1]) if model.objective == "contrastive" else None
    history: list[dict[str, float]] = []
    start, best, best_state, stale = 0, math.inf, None, 0
    saved = resume_state(checkpoint, key)
    if dist.from_main(saved.get("epoch", 0)) != saved.get("epoch", 0):
        raise RuntimeError(f"rank {dist.rank()} sees another resume point than rank 0 in {checkpoint}; with several "
                           "machines the models folder must be shared, or delete the checkpoint to start over")
    if saved:
        state = load_checkpoint(checkpoint, model, optimizer, scheduler)
        start, history = state["epoch"], state["history"]
        best = min(r["val_loss"] for r in history)
        torch.set_rng_state(torch.tensor(state["rng"], dtype=torch.uint8))
        generator.set_state(torch.tensor(state["gen"], dtype=torch.uint8))
        log.info("resuming %s from epoch %d of %d (%s)", desc, start, cfg.epochs, checkpoint)
    ddp = dist.wrap(model, device)  # every parameter trains: one wrapper for the run
    fmt = memory_format(device)
    bar = tqdm(range(start, cfg.epochs), desc=desc, unit="epoch", initial=start, total=cfg.epochs,
               mininterval=0.5 if sys.stderr.isatty() else 30, disable=not dist.is_main())
    for epoch in bar:
        t0 = time.perf_counter()
        ddp.train()
        total, loss_sum = 0, torch.zeros((), dtype=torch.float64, device=device)  # summed on the device: no sync
        for (x,) in loader:
            x = x.to(device, torch.float32, non_blocking=True)
            if fmt is not torch.contiguous_format:
                x = x.contiguous(memory_format=fmt)
            with autocast(device):
                loss = ddp(x, cfg, transform)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += len(x)
            loss_sum += loss.detach().double() * len(x)
        total, loss_sum = dist.sum_all([total, float(loss_sum)])
        dist.sync_buffers(model)
        check_finite_loss(loss_sum / max(total, 1), f"{desc} epoch {epoch + 1}", (epoch + 1) * len(loader))
        row = {
            "epoch": epoch + 1,
            "train_loss": round(loss_sum / max(total, 1), 5),
            "val_loss": round(val_loss(model, val, cfg, transform, device), 5),
            "val_acc": round(knn_accuracy(model.backbone, *monitor, device), 5),
            "lr": round(optimizer.param_groups[0]["lr"], 8),
            "seconds": round(time.perf_counter() - t0, 3),
            "world_size": dist.world_size(),
        }
        history.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.4f}", knn_acc=f"{row['val_acc']:.3f}", refresh=False)
        log.info("%s epoch %d: loss %.4f, val loss %.4f, kNN val accuracy %.4f", desc, epoch + 1,
                 row["train_loss"], row["val_loss"], row["val_acc"])
        if row["val_loss"] < best:
            best, stale = row["val_loss"], 0
            if cfg.patience:
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        if checkpoint and dist.is_main():
            save_epoch(checkpoint, model, optimizer, scheduler, key, history, generator)
        if dist.from_main(bool(cfg.patience and stale >= cfg.patience)):  # rank 0 decides, every rank stops
            log.info("%s: early stop after epoch %d (best val loss %.4f)", desc, epoch + 1, best)
            break
    bar.close()
    finish(model, best_state if cfg.patience else None, checkpoint)
    return history


def pretrain_ssl(
    cfg: Any, arch: str, channels: int, parts: dict[str, torch.Tensor], source: dict[str, torch.Tensor],
    weights: Path, checkpoint: Path, generator: torch.Generator, device: torch.device, init: Path | None = None,
    desc: str = "pretrain",
) -> list[dict]:
    """Self-supervised training per `cfg` (pretrain.image, or its adapt section) on the named
    unlabelled image sets `parts`, from random weights or the backbone in `init`; writes
    `weights` (backbone only; resumable from `checkpoint`) and returns the history."""
    train = torch.cat(list(parts.values()))
    if len(train) < 2:
        raise ValueError(f"{', '.join(parts)}: {len(train)} unlabelled image(s); "
                         "self-supervised pretraining needs at least 2")
    log.info("%s pretraining on %d unlabelled images (%s)%s", cfg.objective, len(train),
             ", ".join(f"{n}: {len(x)}" for n, x in parts.items()), f" from {init}" if init else "")
    size = train.shape[-1]
    classifier = build_model(arch, num_classes=2, in_channels=channels)
    if init is not None:  # continued pretraining: start from a backbone (ours: `backbone.*` keys)
        backbone = {k: v for k, v in load_weights(init).items() if k.startswith("backbone.")}
        classifier.load_state_dict(backbone, strict=False)
    model = SSLModel(classifier.backbone, classifier.feature_dim, cfg.objective, channels, size)
    ref = (source["x_train"][:KNN_REFERENCE], source["y_train"][:KNN_REFERENCE])
    history = fit_ssl(model, train, source["x_val"], (ref, (source["x_val"], source["y_val"])), cfg, device,
                      generator, checkpoint=checkpoint, desc=f"{desc} ({cfg.objective})")
    meta = {"arch": arch, "in_channels": channels, "objective": cfg.objective, "unlabelled": list(parts),
            "images": len(train), "init": str(init) if init else "random"}
    if dist.is_main():
        save_weights(Encoder(model.backbone), weights, meta=meta)
    return history
