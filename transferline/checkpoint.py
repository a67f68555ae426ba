"""Checkpoints in safetensors: model weights, optimizer and scheduler state,
epoch and history, so an interrupted stage resumes where it stopped.

Tensors go in the safetensors body; everything else (epoch, param groups,
scheduler counters, history) goes in its string metadata as JSON. Nothing is
unpickled on load.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from transferline.errors import StageError

log = logging.getLogger(__name__)


def save_weights(model: torch.nn.Module, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    return save_state_dict(model.state_dict(), path, meta)


def save_state_dict(state: dict[str, torch.Tensor], path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write a state dict as safetensors (on the CPU, contiguous: the image models are channels-last,
    which safetensors refuses), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    save_file(tensors, str(path), metadata={"meta": json.dumps(meta or {})})
    return path


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def read_meta(path: str | Path) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("meta", "{}"))


def resume_state(checkpoint: str | Path | None, key: str) -> dict[str, Any]:
    """The resume state saved in `checkpoint` if it was made with fingerprint
    `key` (same settings, same data), else {} (and the log says why)."""
    if not checkpoint or not Path(checkpoint).exists():
        return {}
    try:
        saved = read_meta(checkpoint).get("state", {})
    except Exception as err:  # a truncated or foreign file: start over, say so
        log.warning("ignoring unreadable checkpoint %s (%s)", checkpoint, err)
        return {}
    if saved.get("fingerprint") != key:
        log.info("checkpoint %s was made with other settings or data; training from the start", checkpoint)
        return {}
    return saved


def save_epoch(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
               key: str, history: list[dict], generator: torch.Generator) -> None:
    """The resume point after an epoch: weights, optimizer, scheduler, history and RNG states."""
    state = {"fingerprint": key, "epoch": len(history), "history": history,
             "rng": torch.get_rng_state().tolist(), "gen": generator.get_state().tolist()}
    save_checkpoint(path, model, optimizer, scheduler, state)


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
) -> Path:
    """Write atomically (tmp + rename) so a kill mid-write leaves the last good one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    opt_scalars: dict[str, dict[str, Any]] = {}
    for idx, slots in opt["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                opt_scalars.setdefault(str(idx), {})[name] = value
    meta = {
        "state": state,
        "param_groups": opt["param_groups"],
        "opt_scalars": opt_scalars,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
    }
    tmp = path.with_suffix(".tmp")
    try:
        save_file(tensors, str(tmp), metadata={"meta": json.dumps(meta)})
    except Exception as err:  # safetensors' own error type on a full disk, not OSError
        raise StageError(f"{path}: cannot write the checkpoint ({err}); the previous one is kept. Free disk "
                         "space (or fix the folder) and run again: training resumes from it") from None
    os.replace(tmp, path)
    return path


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> dict[str, Any]:
    """Restore model, optimizer and scheduler in place; return the saved state."""
    tensors = load_file(str(path))
    meta = read_meta(path)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = value
    for idx, scalars in meta["opt_scalars"].items():
        opt_state.setdefault(int(idx), {}).update(scalars)
    optimizer.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
    if scheduler is not None and meta["scheduler"] is not None:
        scheduler.load_state_dict(meta["scheduler"])
    return meta["state"]
