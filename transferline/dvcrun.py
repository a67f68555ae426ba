"""Run one DVC stage and say whether it ran: DVC alone decides staleness.

`dvc repro --single-item STAGE` runs the stage only if its deps, params or
outs changed since dvc.lock was written; the flow calls this once per stage,
in DAG order. Output streams through while a tail is kept for the error.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

log = logging.getLogger(__name__)


class StageFailed(RuntimeError):
    """A stage exited non-zero; the message carries the stage's own error lines."""


class StageRefused(StageFailed):
    """The stage refused its input (it printed `[stage] error: ...`): the same input fails
    the same way again, so this is never retried (flows/policy.py)."""


# The flow's stage order; a test checks it is a topological order of dvc.yaml.
STAGES = ("ingest", "validate", "split", "preprocess", "pretrain", "finetune", "evaluate", "register",
          "promote")
RUN_ID_ENV = "TRANSFERLINE_MLFLOW_RUN_ID"  # tells a stage which MLflow run is its own
FLOW_RUN_ENV = "TRANSFERLINE_PREFECT_FLOW_RUN_ID"  # the Prefect flow run a stage belongs to (lineage)

# DVC's hints about git staging; the flow handles pushing itself.
NOISE = ("To track the changes with git", "git add ", "To enable auto staging", "dvc config core.autostage",
         "Use `dvc push`", "Data and pipelines are up to date.")


@dataclass(frozen=True)
class StageResult:
    stage: str
    ran: bool
    seconds: float


def dag_stages(dvc_yaml: str | Path = "dvc.yaml") -> list[str]:
    """Stage names in dvc.yaml's order (which is a topological order here)."""
    return list(yaml.safe_load(Path(dvc_yaml).read_text())["stages"])


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def repro_stage(stage: str, env: dict[str, str] | None = None,
                on_line: Callable[[str], None] | None = None, force: bool = False) -> StageResult:
    """`dvc repro --single-item stage`; raise StageFailed with the stage's message.

    `on_line` also gets every line the stage prints (the flow forwards them,
    training progress included, to the Prefect run log)."""
    from transferline.dvcexp import skipped_in_experiment

    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
    if force or skipped_in_experiment(stage):
        # force: the registry lost this version (re-register it); an applied DVC experiment left
        # "skipped" in this stage's report with a matching dvc.lock, so nothing was registered or gated
        cmd.append("--force")
    tail: collections.deque[str] = collections.deque(maxlen=40)
    ran = False
    # Stage commands say `python`: make it this interpreter, venv or not.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    full_env = {**os.environ, "PATH": path, "PYTHONUNBUFFERED": "1", **(env or {})}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env,
                          start_new_session=True) as proc:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                if not line.strip() or line.lstrip().startswith(NOISE):
                    continue
                sys.stderr.write(line)
                tail.append(line.rstrip())
                if on_line is not None:
                    on_line(line.rstrip())
                ran = ran or line.startswith(f"Running stage '{stage}'")
        except BaseException:
            # A timeout or an interrupt: stop DVC and the stage it started, not only DVC.
            _kill_group(proc)
            raise
    if proc.returncode != 0:
        errors = [line for line in tail if "error:" in line.lower() or line.startswith(("  -", "("))] or list(tail)[-10:]
        refused = any(line.startswith(f"[{stage}] error:") for line in tail)
        raise (StageRefused if refused else StageFailed)(f"stage '{stage}' failed:\n" + "\n".join(errors))
    return StageResult(stage, ran, round(time.perf_counter() - t0, 2))
