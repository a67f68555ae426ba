"""Data-parallel training on PyTorch DistributedDataParallel: the process group,
who this rank is, and the few collectives the training loops need.

Outside torchrun (one process, the default) nothing here touches
torch.distributed: `world_size()` is 1, `is_main()` is True, `wrap` returns
the model itself, the reductions return their input, and `global_batches`
yields exactly the batches a `DataLoader(shuffle=True, generator=g)` would.

Under torchrun (transferline/launch.py) every rank runs the same loop:

* data: every rank draws the same seeded permutation (same generator, same
  seed), cuts it into *global* batches of `batch_size` and keeps its own
  slice of each (`global_batches`, `local_part`): disjoint shards, a new
  order every epoch, and the global batch is params.yaml's batch_size, so a
  step is the single-process step on the same images (up to batch-norm
  batch statistics on CPUs; SyncBatchNorm on GPUs).
* gradients: DDP averages them. DDP reduces only the parameters that were
  trainable when it was built, so `wrap` is called again when gradual
  unfreezing changes the trainable set (see `Rewrapper`).
* buffers: DDP broadcasts rank 0's batch-norm running statistics before each
  forward; `sync_buffers` does it once more after an epoch, so every rank
  evaluates (and rank 0 saves) the same model.
* decisions (early stopping, resume) are rank 0's, broadcast.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import BatchSampler, RandomSampler, Sampler

log = logging.getLogger(__name__)


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if active() else 0


def is_main() -> bool:
    """Rank 0: the only one that writes checkpoints, weights, histories and logs progress."""
    return rank() == 0


def _die_with_parent() -> None:
    """A SIGKILLed torchrun cannot forward the signal; its workers (own sessions) must not train on as orphans."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: torchrun's own SIGTERM forwarding still applies
        pass


@contextmanager
def session(backend: str = "auto", device: str = "auto") -> Iterator[None]:
    """Join the process group torchrun set up (env:// rendezvous), leave it at the end.

    backend auto: nccl when this rank trains on a GPU, else gloo."""
    _die_with_parent()
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # "cuda" below now means this rank's GPU
    chosen = backend if backend != "auto" else ("nccl" if cuda else "gloo")
    dist.init_process_group(chosen)
    log.info("rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), chosen)
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def sum_all(values: Sequence[float]) -> list[float]:
    """Element-wise sums over the ranks (float64 on the CPU: exact for counts)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return t.tolist()


def from_main(value: object) -> object:
    """Rank 0's `value` on every rank (a picklable object: a stop decision, a resume point)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=_collective_device())
    return box[0]


def _collective_device() -> torch.device:
    # nccl moves tensors only between GPUs
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP around `model` when several ranks train, else `model` itself.

    DDP broadcasts rank 0's parameters and buffers on construction, so every
    rank starts from the same weights. On GPUs batch norm becomes
    SyncBatchNorm (statistics over the global batch); SyncBatchNorm cannot
    run on CPUs, where each rank normalises with its own half-batch and DDP
    keeps the running statistics equal (rank 0's, broadcast every forward)."""
    if not active() or world_size() == 1:
        return model
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index or torch.cuda.current_device()])
    return nn.parallel.DistributedDataParallel(model)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class Rewrapper:
    """Keeps a DDP wrapper in step with the trainable parameters.

    DDP registers its reduction for the parameters that require grad when it
    is built; one unfrozen later (gradual unfreezing) would never be reduced
    and the ranks would drift apart. Rebuilding the wrapper when the set
    changes (a few times per run) is cheaper than find_unused_parameters
    (a graph walk every step, and it does not track later-unfrozen
    parameters either)."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.model, self.device = model, device
        self.trainable: frozenset[int] = frozenset()
        self.wrapped: nn.Module = model

    def __call__(self) -> nn.Module:
        trainable = frozenset(id(p) for p in self.model.parameters() if p.requires_grad)
        if trainable != self.trainable:
            self.trainable = trainable
            self.wrapped = wrap(self.model, self.device)
        return self.wrapped


def sync_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (batch-norm running statistics) on every rank."""
    if active() and world_size() > 1:
        for buf in unwrap(model).buffers():
            dist.broadcast(buf.data, src=0)


class global_batches(Sampler[list[int]]):  # noqa: N801 (used like DataLoader's samplers)
    """This rank's part of every global batch of a seeded shuffle.

    Every rank consumes `generator` identically, so all see the same
    permutation and the same cut into batches of `batch_size` and keep
    disjoint slices of each; the generator advancing is what re-shuffles each
    epoch (DistributedSampler's set_epoch). With one rank these are exactly
    the batches of DataLoader(batch_size, shuffle=True, generator): the
    shuffle is the same RandomSampler. A last global batch with fewer items
    than ranks is dropped, since DDP needs a step from every rank."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, drop_last: bool = False) -> None:
        self.inner = BatchSampler(RandomSampler(range(n), generator=generator), batch_size, drop_last)
        self.world = world_size()
        tail = 0 if drop_last else n % batch_size
        self.length = len(self.inner) - (1 if self.world > 1 and 0 < tail < self.world else 0)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.inner:
            if self.world == 1:
                yield batch
            elif len(batch) >= self.world:
                yield local_part(batch)

    def __len__(self) -> int:
        return self.length


def local_part(batch: Sequence[int] | torch.Tensor) -> list[int] | torch.Tensor:
    """This rank's contiguous slice of a global batch (sizes differ by at most one)."""
    world, r = world_size(), rank()
    if world == 1:
        return batch
    n = len(batch)
    lo, hi = r * n // world, (r + 1) * n // world
    return batch[lo:hi]
