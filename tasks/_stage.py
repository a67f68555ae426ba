"""What every stage's entry point shares: logging, params, the modality, a clean exit.

`python -m tasks.<stage>` loads params.yaml, picks the modality once and runs
`transferline.<modality>.<stage>.run(params, params.paths)`. The modality
module is imported by name, so an image stage never imports text code (and
the reverse); dvc.yaml lists `transferline/${modality}/...` accordingly.
"""

from __future__ import annotations

import importlib
import logging
import sys

from transferline.config import ParamsError, load_params
from transferline.env import apply_env_defaults
from transferline.errors import StageError


def run_stage(stage: str) -> None:
    """Load params, run the stage for the active modality, turn known errors into one clear line and exit 1."""
    apply_env_defaults()
    logging.basicConfig(level=logging.INFO, format=f"[{stage}] %(message)s")
    try:
        params = load_params()
        module = importlib.import_module(f"transferline.{params.modality}.{stage}")
        module.run(params, params.paths)
    except (StageError, ParamsError) as err:
        print(f"[{stage}] error: {err}", file=sys.stderr)
        sys.exit(1)
