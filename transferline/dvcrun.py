"""Ask DVC what is stale, run one DVC stage and say whether it ran: DVC alone
decides staleness.

`stale_plan()` asks DVC once (its Python API: `dvc status` plus the stage
graph), so the flow starts no process for a stage DVC calls up to date and
none of whose upstream stages ran; `stale_plan_started()` asks it in a process
of its own while the flow loads MLflow. Every other stage goes through
`dvc repro --single-item STAGE`, which runs it only if its deps, params or
outs changed since dvc.lock was written (a stage downstream of a rerun one may
become stale only once that one has run: DVC re-checks it then). Output
streams through while a tail is kept for the error.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
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

# What a stage says when its work is done (tasks/_stage.py).
WORK_DONE = re.compile(r"\[(\w+)\] done in ([\d.]+) s$")
# DVC's hints about git staging; the flow handles pushing itself.
NOISE = ("To track the changes with git", "git add ", "To enable auto staging", "dvc config core.autostage",
         "Use `dvc push`", "Data and pipelines are up to date.")


@dataclass(frozen=True)
class StageResult:
    stage: str
    ran: bool
    seconds: float  # wall time: DVC, the stage's process, its imports and its work
    work_seconds: float | None = None  # the work alone, as the stage timed it (tasks/_stage.py)


def dag_stages(dvc_yaml: str | Path = "dvc.yaml") -> list[str]:
    """Stage names in dvc.yaml's order (which is a topological order here)."""
    return list(yaml.safe_load(Path(dvc_yaml).read_text())["stages"])


@dataclass(frozen=True)
class StalePlan:
    """DVC's answer before a run: which stages are stale, and each stage's upstream stages."""

    stale: dict[str, list]  # `dvc status` per stale stage: what changed
    upstream: dict[str, set[str]]  # stage -> every stage it depends on, directly or not

    def must_check(self, stage: str, ran: set[str]) -> bool:
        """True when DVC must look again: stale now, or downstream of a stage that ran in this run.

        A stage not stale before the run and with no upstream stage run since
        has the same deps, params and outs it had then: up to date."""
        return stage in self.stale or bool(self.upstream.get(stage, set()) & ran) or stage not in self.upstream


def stale_plan(root: str | Path = ".") -> StalePlan:
    """One `dvc status` through DVC's Python API (no subprocess), plus the stage graph."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        status = repo.status()
        graph = repo.index.graph  # networkx: an edge stage -> a stage whose outs it reads
        # status keys are addresses relative to the cwd ("dvc.yaml:stage" elsewhere): use stage names
        # a data .dvc file (`dvc add`, `dvc import` in a project made by init) has no name: its address
        names = {stage.addressing: getattr(stage, "name", None) or stage.addressing for stage in graph}
        upstream = {}
        for stage in graph:
            seen, todo = set(), list(graph.successors(stage))
            while todo:
                dep = todo.pop()
                if names[dep.addressing] not in seen:
                    seen.add(names[dep.addressing])
                    todo.extend(graph.successors(dep))
            upstream[names[stage.addressing]] = seen
    return StalePlan(stale={names.get(k, k): v for k, v in status.items()}, upstream=upstream)


@contextlib.contextmanager
def stale_plan_started(root: str | Path = ".") -> Iterator[Callable[[], StalePlan]]:
    """Start `stale_plan(root)` in a process of its own; yield the call that returns its answer.

    DVC's status costs about a second and a half of one core (importing DVC, reading the
    stage graph, hashing); the flow starts it once the data is in place and loads MLflow
    meanwhile, so on two cores a no-op run no longer waits for it. If that process fails,
    the answer is asked here, where DVC raises its own error."""
    proc = subprocess.Popen([sys.executable, "-m", "transferline.dvcrun", str(root)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

    def answer() -> StalePlan:
        out, err = proc.communicate()
        if proc.returncode == 0:
            found = json.loads(out)
            return StalePlan(found["stale"], {k: set(v) for k, v in found["upstream"].items()})
        log.debug("dvc status in its own process failed (%s); asking again here", err.strip()[-500:])
        return stale_plan(root)

    try:
        yield answer
    finally:
        if proc.poll() is None:  # the run ended before it asked
            proc.kill()
            proc.communicate()


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
    ran, work = False, None
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
                if done := WORK_DONE.match(line):
                    work = float(done[2]) if done[1] == stage else work
        except BaseException:
            # A timeout or an interrupt: stop DVC and the stage it started, not only DVC.
            _kill_group(proc)
            raise
    if proc.returncode != 0:
        errors = [line for line in tail if "error:" in line.lower() or line.startswith(("  -", "("))] or list(tail)[-10:]
        refused = any(line.startswith(f"[{stage}] error:") for line in tail)
        raise (StageRefused if refused else StageFailed)(f"stage '{stage}' failed:\n" + "\n".join(errors))
    return StageResult(stage, ran, round(time.perf_counter() - t0, 2), work)


if __name__ == "__main__":  # stale_plan_started: the plan as JSON
    plan = stale_plan(sys.argv[1] if len(sys.argv) > 1 else ".")
    print(json.dumps({"stale": plan.stale, "upstream": {k: sorted(v) for k, v in plan.upstream.items()}}))
