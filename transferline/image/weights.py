"""Load pretrained backbone weights from a file, whoever saved it.

Accepted: safetensors files (ours, via `checkpoint.save_weights` or a
checkpoint, or anyone's) and torch state-dict files, read with
`weights_only=True` so nothing arbitrary is unpickled. Keys may be ours
(`backbone.*`), torchvision's (`conv1.weight`, `layer1.0.conv1.weight`,
`features.0.0.weight`: the backbones keep torchvision's module names, so
prefixing `backbone.` maps them), or either behind a `model.` (our
checkpoints) or `module.` (DataParallel) prefix. Only the backbone is
loaded; head/fc/classifier keys are ignored.
"""

from __future__ import annotations

import logging
import pickle
import struct
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

log = logging.getLogger(__name__)

HEAD_PREFIXES = ("head.", "fc.", "classifier.")
WRAPPER_PREFIXES = ("module.", "model.")
# Only where the file's origin is trusted: torch.load(weights_only=False) runs what the pickle says.
CONVERT = ("If you trust its origin, convert it once: python -c \"import torch; from safetensors.torch import "
           "save_file; sd = torch.load('IN', weights_only=False); sd = sd.get('state_dict', sd); "
           "save_file({k: v.contiguous() for k, v in sd.items()}, 'OUT.safetensors')\"")


def _is_safetensors(path: Path) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON header."""
    with path.open("rb") as f:
        start = f.read(9)
    if len(start) < 9:
        return False
    (header_len,) = struct.unpack("<Q", start[:8])
    return start[8:9] == b"{" and 8 + header_len <= path.stat().st_size


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors in `path`, unwrapped from a {"state_dict": ...} or {"model": ...} dict."""
    if _is_safetensors(path):
        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own error types
            raise ValueError(f"{path}: a damaged safetensors file ({err}); save it again") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as err:
        # weights_only=True refused to build Python objects (a pickle could run code) or the file is damaged
        refused = isinstance(err, pickle.UnpicklingError) and "global" in str(err).lower()  # a class or function
        why = "it holds Python objects besides tensors" if refused else \
            f"it is damaged or not a torch file ({type(err).__name__})"
        raise ValueError(f"{path}: not safetensors or a plain state dict of tensors: {why}. {CONVERT}") from None
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict (names -> tensors), got {type(obj).__name__}. {CONVERT}")
    return {str(k): v for k, v in obj.items() if torch.is_tensor(v)}


def _first_conv(model: nn.Module) -> str | None:
    """State-dict key of the backbone's input conv weight (the one a channel change hits)."""
    for name, module in model.backbone.named_modules():
        if isinstance(module, nn.Conv2d):
            return f"backbone.{name}.weight"
    return None


def _target_key(key: str) -> str | None:
    """Our key for a file key, or None for a head key."""
    changed = True
    while changed:  # "module.model.backbone.x" and the like
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    if key.startswith(HEAD_PREFIXES):
        return None
    return key if key.startswith("backbone.") else f"backbone.{key}"


def load_pretrained(model: nn.Module, path: Path) -> dict[str, list[str]]:
    """Copy the backbone weights in `path` into `model`; return what happened.

    A tensor whose shape differs is skipped, except the first conv going
    from 3 input channels to 1: summed over the input channels, which gives
    a greyscale image the response the RGB filters gave to that grey image
    repeated three times. (Only channels are adapted: a torchvision
    resnet18's 7x7 ImageNet `conv1` does not fit our 3x3 one and is
    skipped.)

    Report (lists of our keys, except `unexpected`/`ignored`: file keys):
    loaded, adapted, skipped_shape, missing (in the model, not in the file),
    unexpected (in the file, not in the model), ignored (head keys).
    Raises ValueError naming the file when no weight could be loaded.
    """
    path = Path(path)
    source = read_state_dict(path)
    own = {k: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    first_conv = _first_conv(model)
    kinds = ("loaded", "adapted", "skipped_shape", "missing", "unexpected", "ignored")
    report: dict[str, list[str]] = {k: [] for k in kinds}
    updates: dict[str, torch.Tensor] = {}
    seen: set[str] = set()
    for file_key, tensor in source.items():
        key = _target_key(file_key)
        if key is None:
            report["ignored"].append(file_key)
            continue
        if key not in own:
            report["unexpected"].append(file_key)
            continue
        seen.add(key)
        want = own[key].shape
        if tensor.shape == want:
            updates[key] = tensor
            report["loaded"].append(key)
        elif key == first_conv and tensor.dim() == 4 and tensor.shape[1] == 3 and want[1] == 1 \
                and tensor.shape[0] == want[0] and tensor.shape[2:] == want[2:]:
            updates[key] = tensor.sum(dim=1, keepdim=True)
            report["adapted"].append(key)
        else:
            report["skipped_shape"].append(key)
            log.warning("%s: %s has shape %s in the file, %s in the model; left as initialised",
                        path.name, key, tuple(tensor.shape), tuple(want))
    report["missing"] = [k for k in own if k not in seen]
    if not updates:
        raise ValueError(
            f"{path}: no backbone weights matched {type(model).__name__} "
            f"(file keys start {sorted(source)[:3]}, model keys {list(own)[:3]})"
        )
    # strict=False: the head (and anything missing) keeps its current values.
    result = model.load_state_dict(updates, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    if report["missing"]:
        log.warning("%s: %d backbone tensors not in the file, left as initialised: %s",
                    path.name, len(report["missing"]), ", ".join(report["missing"]))
    if report["unexpected"]:
        log.info("%s: %d file tensors unused: %s", path.name, len(report["unexpected"]),
                 ", ".join(report["unexpected"]))
    log.info("%s: loaded %d, adapted %d, skipped %d backbone tensors", path.name,
             len(report["loaded"]), len(report["adapted"]), len(report["skipped_shape"]))
    return report
