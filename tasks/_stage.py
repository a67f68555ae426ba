"""What every stage's entry point shares: logging, params, the modality, a clean exit.

`python -m tasks.<stage>` loads params.yaml, picks the modality once and runs
`transferline.<modality>.<stage>.run(params, params.paths)`. The modality
module is imported by name, so an image stage never imports text code (and
the reverse); dvc.yaml lists `transferline/${modality}/...` accordingly.
The training stages pass `around` (transferline.launch.distributed_stage),
which re-launches them under torchrun when params.yaml asks for several
processes; the other stages never import it.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from transferline.config import ParamsError, load_params
from transferline.env import apply_env_defaults, exit_fast
from transferline.errors import StageError, connection_failure, tracking_unreachable


def run_stage(stage: str, around: Callable[[str, Any], AbstractContextManager] | None = None) -> None:
    """The stage's process: run it, then exit at once (`exit_fast`: a second saved per stage)."""
    exit_fast(lambda: _run(stage, around))


def _run(stage: str, around: Callable[[str, Any], AbstractContextManager] | None) -> None:
    """Load params, run the stage for the active modality, turn known errors into one clear line and exit 1."""
    apply_env_defaults()
    rank = os.environ.get("RANK", "0")  # set by torchrun; the other ranks say only what goes wrong
    prefix = stage if rank == "0" else f"{stage} rank {rank}"
    logging.basicConfig(level=logging.INFO if rank == "0" else logging.WARNING, format=f"[{prefix}] %(message)s")
    # urllib3 warns on every retry of a refused connection; the stage says it once below
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    try:
        params = load_params()
        module = importlib.import_module(f"transferline.{params.modality}.{stage}")
        t0 = time.perf_counter()
        with around(stage, params) if around else nullcontext():
            module.run(params, params.paths)
        # The stage's own work, timed inside its process: the flow sets it beside the stage's wall
        # time (transferline.dvcrun), so a run shows what the process, imports and DVC cost.
        logging.getLogger(stage).info("done in %.2f s", time.perf_counter() - t0)
    except (StageError, ParamsError) as err:
        print(f"[{prefix}] error: {err}", file=sys.stderr)
        sys.exit(1)
    except Exception as err:
        if (why := connection_failure(err)) is None:
            raise
        # not "error:" alone: that marks input the stage refused, which is never retried (dvcrun)
        uri = os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.uri
        print(f"[{prefix}] transient error: {tracking_unreachable(uri, why)}", file=sys.stderr)
        sys.exit(1)
