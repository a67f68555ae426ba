"""What the gate predicted for a model version on given test inputs, kept for the next gate.

The gate (transferline.promotion) scores the challenger and the champion as registered
models on the current test split. A registered version does not change (its run, its
source, its serving code are fixed when it is made) and its predictions are deterministic,
so what it predicted for these exact inputs is what it would predict again. The nightly
champion was, as a rule, scored by the gate on the same split the night it was the
challenger: kept here, it is not loaded and run again every night (about 1.8 s for the
default small_cnn on 1,941 images on two cores; minutes for a large model on a large test
split).

The key holds the tracking URI, the model name and version, the version's run, source and
creation time (a deleted and re-created model numbers its versions from 1 again), the
versions of MLflow and of the libraries that run the model, and a digest of the raw test
inputs: any change is a miss, and a miss scores as before. The report says which
predictions were kept and when they were made. One JSON file per key in
.transferline/gatecache/ (like transferline.readcache), written whole or not at all.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from transferline.dvcexp import project_root

FOLDER = Path(".transferline/gatecache")
FORMAT = 1  # bumped when the key or the entry changes, so an older entry is never read
LIBRARIES = ("mlflow", "torch", "transformers")  # what loads and runs a registered model


def inputs_digest(x: np.ndarray) -> str:
    """A digest of raw test inputs: uint8 images (dtype, shape, bytes) or strings (an object array)."""
    h = hashlib.sha256()
    if x.dtype == object:
        h.update(json.dumps(["text", x.tolist()]).encode())
    else:
        h.update(json.dumps([str(x.dtype), list(x.shape)]).encode())
        h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()


@functools.cache  # the same in one process: looked up once, not for each side of each gate
def _library_versions() -> tuple[str | None, ...]:
    found: list[str | None] = []
    for name in LIBRARIES:
        try:
            found.append(metadata.version(name))
        except metadata.PackageNotFoundError:
            found.append(None)
    return tuple(found)


def entry_path(client: Any, name: str, version: str, digest: str) -> Path:
    """Where the predictions of `models:/name/version` on the inputs of `digest` (inputs_digest) are kept."""
    import mlflow

    mv = client.get_model_version(name, version)
    key = [FORMAT, mlflow.get_tracking_uri(), name, str(version), mv.run_id, mv.source, mv.creation_timestamp,
           list(_library_versions()), digest]
    return project_root() / FOLDER / (hashlib.sha256(json.dumps(key).encode()).hexdigest()[:32] + ".json")


def kept_or_predicted(client: Any, name: str, version: str, test: Any, at: str,
                      predict: Callable[[], list[str]]) -> tuple[list[str], str | None]:
    """(predictions, when the gate made them if they were kept, else None: made now by `predict`
    and kept for next time, stamped `at`). `test`: the gate's TestSet (its `digest` and `n`)."""
    path = entry_path(client, name, version, test.digest)
    try:
        kept = json.loads(path.read_text())
        if len(kept["predictions"]) == test.n:
            return [str(p) for p in kept["predictions"]], str(kept["at"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not kept yet, or unreadable: predict
    said = predict()
    _write(path, {"model": name, "version": str(version), "at": at, "predictions": said})
    return said, None


def _write(path: Path, entry: dict) -> None:
    """Whole or not at all: two gates at once may write the same entry (the same content)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as out:
            json.dump(entry, out)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only project still gates; it only scores again next time
