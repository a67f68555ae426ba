"""Fine-tuning strategies: which parameters train, at which learning rate.

`param_groups()` freezes what a strategy leaves out (`requires_grad=False`,
and in no optimizer group, so weight decay cannot move it either) and
returns groups for a torch optimizer. Blocks come from
`transferline.image.models.blocks()`, input to output; "the top" is the output end.

| strategy | trains | learning rate |
|---|---|---|
| full | everything | lr |
| linear_probe | head | lr |
| last_n | head + the last `last_n` blocks | lr |
| discriminative | everything | head lr, last block lr*d, the one before lr*d**2, ... |
| gradual | head, then one more block every `every` epochs (`unfreeze_for_epoch`) | lr |

Every group carries a "name" ("head", "block<i>", "all") for logging.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from transferline.config.image import STRATEGIES
from transferline.image.models import blocks

log = logging.getLogger(__name__)



def _params(module: nn.Module) -> list[nn.Parameter]:
    return list(module.parameters())


def _check_blocks_cover_backbone(model: nn.Module, stages: list[nn.Module]) -> None:
    """A backbone parameter outside every block would be trained or frozen by accident; refuse."""
    in_blocks = {id(p) for b in stages for p in b.parameters()}
    outside = [n for n, p in model.backbone.named_parameters() if id(p) not in in_blocks]
    if outside:
        raise ValueError(f"blocks() of {type(model).__name__} miss backbone parameters: {outside[:5]}")


def param_groups(
    model: nn.Module, strategy: str, lr: float, last_n: int = 1, lr_decay: float = 0.5
) -> list[dict[str, Any]]:
    """Set `requires_grad` for `strategy` and return the optimizer's param groups.

    `last_n` is used by "last_n" only (0 is a linear probe; more than there
    are blocks trains them all); `lr_decay` (0 < d <= 1) by "discriminative"
    only. Call it once per fresh model: it first makes everything trainable,
    then freezes.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown fine-tuning strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0 (got {lr})")
    if last_n < 0:
        raise ValueError(f"last_n must be >= 0 (got {last_n})")
    if not 0 < lr_decay <= 1:
        raise ValueError(f"lr_decay must be in (0, 1] (got {lr_decay})")
    stages = blocks(model)
    _check_blocks_cover_backbone(model, stages)
    model.requires_grad_(True)
    if strategy == "full":
        return [{"params": _params(model), "lr": lr, "name": "all"}]

    head = {"params": _params(model.head), "lr": lr, "name": "head"}
    if strategy == "discriminative":
        n = len(stages)
        return [head] + [
            {"params": _params(stages[i]), "lr": lr * lr_decay ** (n - i), "name": f"block{i}"}
            for i in reversed(range(n))
        ]

    # linear_probe, last_n and gradual: the head plus the top `keep` blocks.
    keep = min(last_n, len(stages)) if strategy == "last_n" else 0
    model.backbone.requires_grad_(False)
    groups = [head]
    for i in reversed(range(len(stages) - keep, len(stages))):
        stages[i].requires_grad_(True)
        groups.append({"params": _params(stages[i]), "lr": lr, "name": f"block{i}"})
    return groups


def unfreeze_for_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    every: int,
    scheduler: LRScheduler | None = None,
) -> int:
    """Gradual unfreezing: before 0-based `epoch`, have `epoch // every` top blocks trainable.

    Call it at the start of every epoch. A block that becomes trainable is
    added to the optimizer as a new group that copies the first (head)
    group's hyper-parameters: its current `lr` (so it joins the schedule
    where it is now) and its `initial_lr` (the base lr schedulers scale).

    Pass the `scheduler` if there is one: torch schedulers keep one base lr
    (and LambdaLR one lambda) per group as of their construction, and
    `step()` fails (zip strict) once the optimizer has more groups; this
    extends `base_lrs` and `lr_lambdas` for the new group.

    It catches up (and is idempotent), which resuming needs: the optimizer
    must have as many groups as the saved one. For a checkpoint written after
    0-based epoch e (state "epoch" = e + 1), call it with e *before*
    building the scheduler and `load_checkpoint`, then with e + 1 (and the
    scheduler) at the start of the next epoch as usual. Returns the number
    of blocks now trainable.
    """
    if every < 1:
        raise ValueError(f"every must be >= 1 (got {every})")
    stages = blocks(model)
    target = min(max(epoch, 0) // every, len(stages))
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    base = optimizer.param_groups[0]
    for i in range(len(stages) - 1, len(stages) - 1 - target, -1):
        params = _params(stages[i])
        if all(id(p) in in_optimizer for p in params):
            continue
        stages[i].requires_grad_(True)
        group = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in base.items() if k not in ("params", "name")}
        group.setdefault("initial_lr", group["lr"])
        optimizer.add_param_group({**group, "params": params, "name": f"block{i}"})
        if scheduler is not None:
            _extend_scheduler(scheduler, group["initial_lr"])
        log.info("epoch %d: unfroze block%d (%d parameters)", epoch, i, sum(p.numel() for p in params))
    return target


def _extend_scheduler(scheduler: LRScheduler, initial_lr: float) -> None:
    """Give `scheduler` per-group state for the group just added to its optimizer."""
    scheduler.base_lrs.append(initial_lr)
    lambdas = getattr(scheduler, "lr_lambdas", None)  # LambdaLR, MultiplicativeLR
    if lambdas is not None:
        lambdas.append(lambdas[0])
    last = getattr(scheduler, "_last_lr", None)
    if last is not None:
        last.append(scheduler.optimizer.param_groups[-1]["lr"])


def set_batchnorm_training(model: nn.Module, train_bn: bool) -> None:
    """With `train_bn=False`, BatchNorm layers of frozen blocks run in eval mode.

    A frozen block's BatchNorm would otherwise still update its running
    mean/var on target batches in train mode, drifting away from the
    statistics its frozen weights were learnt with. `model.train()` resets
    every module to train mode, so call this again after each
    `model.train()` (i.e. at the start of every training epoch).
    `train_bn=True` puts them back in the model's own mode.
    """
    for stage in blocks(model):
        if any(p.requires_grad for p in stage.parameters()):
            continue
        for module in stage.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.train(model.training if train_bn else False)


def _warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min((step - warmup_steps) / max(1, total_steps - warmup_steps), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    """Linear warm-up to each group's lr over `warmup_steps`, then cosine to 0 at `total_steps`.

    Step it once per optimizer step. The factor is a `functools.partial`, so
    the scheduler pickles and its `state_dict()` stays JSON-serialisable.
    """
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"need 0 <= warmup_steps <= total_steps and total_steps >= 1 (got {warmup_steps}, {total_steps})"
        )
    factor = functools.partial(_warmup_cosine_factor, warmup_steps=warmup_steps, total_steps=total_steps)
    return LambdaLR(optimizer, factor)
