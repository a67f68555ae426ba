"""What every entry point shares about its process: the environment defaults
and a quick exit (no torch, no Prefect, no MLflow)."""

from __future__ import annotations

import atexit
import contextlib
import gc
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

# Telemetry off, hubs offline, project-local Prefect state. Set before the
# libraries are imported; a user's own environment wins.
ENV_DEFAULTS = {
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_HOME": ".transferline/prefect",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "GIT_PYTHON_REFRESH": "quiet",
    # MLflow retries a refused connection 7 times with doubling waits (about two minutes) before
    # a stage can say the tracking server is gone; the orchestrator retries the registry
    # stages (orchestrate.retries), so a few seconds here are enough.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}


def apply_env_defaults() -> None:
    """Set every ENV_DEFAULTS key the environment does not set already."""
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    # Prefect creates its home without parents and then fails to open its DB.
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def imports_without_gc() -> Iterator[None]:
    """Import many modules with Python's cyclic garbage collector off, then freeze what is alive.

    torch and MLflow (or Prefect and MLflow) make some 700,000 objects that live as long as the
    process; while they are imported the collector walks all of them again and again (9 full
    passes): 1.7 s of the 10.5 s of CPU a stage's libraries take to import, 0.7-1.5 s of the
    CLI's 5.6 s (two cores, `gc.disable()` vs not, 2 runs each). Frozen (`gc.freeze`) they are
    never walked again, here or in a fork, whose memory pages they then share."""
    enabled = gc.isenabled()  # nested: the outermost turns it back on
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def exit_fast(main: Callable[[], object]) -> None:
    """Run an entry point's `main`, then end the process without tearing the interpreter down.

    Once the work is done and every exit handler has run (MLflow, Prefect and logging flush
    theirs), a process that loaded torch, MLflow or Prefect still spends 0.5-1 s on 2 cores
    freeing its modules one by one (bench/overhead.py), which writes nothing. `os._exit`
    skips that; the exit status is the one `main` ended with. Call it only from a `__main__`
    entry point: it ends the process, so never inside a test runner.
    """
    status = [1]  # an uncaught exception: the interpreter prints it, then exit 1
    atexit.register(_leave, status)  # registered before the libraries' handlers: runs after them
    try:
        main()
        status[0] = 0
    except SystemExit as err:
        status[0] = err.code if isinstance(err.code, int) else int(err.code is not None)
        raise
    except KeyboardInterrupt:
        status[0] = 130
        raise


def _leave(status: list[int]) -> None:
    logging.shutdown()  # its own exit handler may have been registered before ours
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status[0])
