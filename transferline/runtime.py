"""Seeds and devices (the torch side of the runtime; environment defaults: transferline.env)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for in params.yaml but no GPU is visible; set device: auto or cpu")
    return torch.device(name)


def set_threads(n: int) -> None:
    """On a shared CPU one thread can be several times faster than two fighting for cores."""
    if n:
        torch.set_num_threads(n)


# glibc's mallopt parameters (malloc.h) and the values training runs with
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for it
TRIM_THRESHOLD = 256 << 20


def glibc_malloc() -> bool:
    """True where this process's C library is glibc (mallopt and its parameters below are glibc's)."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # no confstr (Windows), no such name (macOS)
        return False


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep the memory a training step frees for the next step; False where not glibc.

    By default it hands a freed block over its adaptive threshold (128 KB up to 32 MB) and a free
    heap top over twice that back to the OS at once, so every step faulted its activations' pages
    in again; how many depended on the order earlier allocations happened in. Pretraining, default
    size, in a new process: 1.6-3.0 million page faults, 55.7-58.0 s (mean 56.7); with these values
    0.27-0.38 million, 53.7-56.0 s (mean 55.1; two runs with a 1 GB trim threshold, the same), peak
    memory 1.2-1.3 GB either way (by hand, alternated; README "The training loops").
    Process-wide, set once: every training loop of both modalities calls it (and the bench's bare
    loops run under it too)."""
    if not glibc_malloc():
        return False
    libc = ctypes.CDLL(None)  # the C library this process already uses
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


# --- the GPU path: each helper is a no-op on a CPU, so that path stays as it was ---

def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on a GPU that supports it (no loss scaling needed, unlike fp16); nothing on a CPU."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(device: torch.device) -> torch.memory_format:
    """The layout of an input batch: channels_last on a GPU (tensor cores want NHWC); the default on a
    CPU, where the convolution follows its weights' layout, which models.build_model makes channels-last
    on every device (converting each batch there measured slower: small_cnn, 1-channel images)."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def place(tensors: dict[str, torch.Tensor], device: torch.device, share: float = 0.3) -> dict[str, torch.Tensor]:
    """On a GPU, move the tensors there if they take under `share` of its free memory (no copy per batch),
    else pin them (non_blocking copies overlap the compute). On a CPU: unchanged."""
    if device.type != "cuda":
        return tensors
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    free, _ = torch.cuda.mem_get_info(device)
    if size < share * free:
        return {k: t.to(device) for k, t in tensors.items()}
    return {k: t.pin_memory() for k, t in tensors.items()}
