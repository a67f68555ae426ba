"""What every stage's `main()` shares: logging setup, params, clean exit."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from transferline.config import Params, ParamsError, load_params
from transferline.env import apply_env_defaults


class StageError(RuntimeError):
    """The stage cannot go on; the message says what is wrong and how to fix it."""


def run_main(stage: str, work: Callable[[Params], object]) -> None:
    """Load params, run the stage, turn known errors into one clear line and exit 1."""
    apply_env_defaults()
    logging.basicConfig(level=logging.INFO, format=f"[{stage}] %(message)s")
    try:
        work(load_params())
    except (StageError, ParamsError) as err:
        print(f"[{stage}] error: {err}", file=sys.stderr)
        sys.exit(1)
