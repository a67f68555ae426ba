"""Run a training stage under torchrun when params.yaml asks for several processes.

DVC's command stays `python -m tasks.pretrain` (or finetune): when
`distributed.nproc_per_node x nnodes` is above 1 and this process is not
already a torchrun worker, the stage replaces itself (exec) by
`python -m torch.distributed.run ... -m tasks.<stage>`. torchrun then starts
the workers, restarts none (a failed rank fails the stage), forwards SIGTERM
to them, and exits with their status, which DVC sees as the stage's own.
Each worker runs the stage inside `transferline.distributed.session`.

No torch import here: the launching process only builds a command line.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)


def is_worker() -> bool:
    """True inside a process torchrun started (it sets these for every rank)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def torchrun_argv(stage: str, cfg: Any) -> list[str]:
    """The torchrun command for `stage` from params.distributed (`cfg`)."""
    argv = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={cfg.nproc_per_node}",
            f"--nnodes={cfg.nnodes}", "--max-restarts=0"]
    if cfg.rdzv_endpoint:
        argv += ["--rdzv-backend=c10d", f"--rdzv-endpoint={cfg.rdzv_endpoint}", f"--rdzv-id={cfg.rdzv_id}-{stage}"]
    else:
        argv.append("--standalone")  # a local rendezvous on a free port: no address to configure
    return [*argv, "-m", f"tasks.{stage}"]


def worker_env(cfg: Any) -> dict[str, str]:
    """Threads per worker: the cores split between this node's processes (torchrun would set 1).

    A user's own OMP_NUM_THREADS wins."""
    if "OMP_NUM_THREADS" in os.environ:
        return {}
    return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // cfg.nproc_per_node))}


@contextmanager
def distributed_stage(stage: str, params: Any) -> Iterator[None]:
    """Around a training stage: exec torchrun if several processes are asked, join the process group in a worker.

    One process (the default) runs the stage exactly as before: no process
    group, no torch.distributed."""
    cfg = params.distributed
    if cfg.world_size > 1 and not is_worker():
        argv = torchrun_argv(stage, cfg)
        log.info("%d process(es) x %d node(s): %s", cfg.nproc_per_node, cfg.nnodes, " ".join(argv[1:]))
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, argv, {**os.environ, **worker_env(cfg)})  # never returns
    if not is_worker():
        yield
        return
    from transferline.distributed import session

    with session(cfg.backend, params.device):
        yield
