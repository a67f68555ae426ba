"""Ask DVC what is stale, run one DVC stage and say whether it ran: DVC alone
decides staleness.

`stale_plan()` asks DVC once (its Python API: `dvc status` plus the stage
graph), so the flow starts nothing for a stage DVC calls up to date and none
of whose upstream stages ran. Every other stage goes to DVC's own
`Repo.reproduce(STAGE, single_item=True)` (what `dvc repro --single-item STAGE`
runs), which runs it only if its deps, params or outs changed since dvc.lock
was written (a stage downstream of a rerun one may become stale only once that
one has run: DVC re-checks it then). Both happen in one DVC process per run
(`DvcProcess`), not in the flow's: it streams the stages' output, and it and
its stage can be stopped together.
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
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from transferline.config import Params

log = logging.getLogger(__name__)


class StageFailed(RuntimeError):
    """A stage exited non-zero; the message carries the stage's own error lines."""


class StageRefused(StageFailed):
    """The stage refused its input (it printed `[stage] error: ...`): the same input fails
    the same way again, so this is never retried (flows/policy.py)."""


# The flow's stage order; a test checks it is a topological order of dvc.yaml.
STAGES = ("ingest", "validate", "split", "preprocess", "pretrain", "finetune", "evaluate", "register",
          "promote")

# What a stage says when its work is done (tasks/_stage.py).
WORK_DONE = re.compile(r"\[(\w+)\] done in ([\d.]+) s$")
# What DVC says when it checks a stage's outputs out of its run cache (the same deps, params
# and command ran before) instead of running the command.
FROM_RUN_CACHE = "Stage '{}' is cached - skipping run"
RESTORED = "restored (DVC run cache)"
# DVC's hints about git staging; the flow handles pushing itself.
NOISE = ("To track the changes with git", "git add ", "To enable auto staging", "dvc config core.autostage",
         "Use `dvc push`", "Data and pipelines are up to date.")


@dataclass(frozen=True)
class StageResult:
    stage: str
    ran: bool
    seconds: float  # wall time: DVC, the stage's process, its imports and its work
    work_seconds: float | None = None  # the work alone, as the stage timed it (tasks/_stage.py)
    restored: bool = False  # DVC checked its outputs out of the run cache: `ran`, but the command did not run


def outcome(ran: bool, restored: bool = False) -> str:
    """A stage's status as the run's table, log and Prefect report name it."""
    return RESTORED if restored else "ran" if ran else "skipped (up to date)"


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


# Starts a reply of the DVC process (`DvcProcess`): no line a stage prints starts so.
REPLY = "::transferline-dvc:: "


class DvcProcess:
    """One DVC process that answers the stale plan, then reproduces stage after stage.

    `dvc repro --single-item STAGE` in a process per stage imported DVC and read the project
    every time: about 0.9 s more per stage that ran and 1.3 s more per stage found up to date
    (by hand, the default project) than `Repo.reproduce` in a process that has both. This one
    (`python -m transferline.dvcrun`) pays that once a run; DVC still decides whether each stage
    runs. It starts with the plan (`plan=True`: DVC's status runs on the other core while the
    flow loads MLflow). It and the stages DVC starts from it run in a session of their own, so
    a timeout or an interrupt stops them together; the next stage then starts a new one.
    Output streams through while a tail is kept for the error."""

    def __init__(self, root: str | Path = ".", plan: bool = False, warm: str | None = None):
        self.root = Path(root)
        self.warm = warm  # a modality: its stages forked from the DVC process (transferline.warmstart)
        self.proc: subprocess.Popen | None = None
        self._start(plan)

    def _start(self, plan: bool) -> None:
        # Stage commands say `python`: make it this interpreter, venv or not.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        options = [*(["--plan"] if plan else []), *(["--warm", self.warm] if self.warm else [])]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "transferline.dvcrun", str(self.root), *options],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PATH": path, "PYTHONUNBUFFERED": "1"}, start_new_session=True)

    def _reply(self, on_line: Callable[[str], None] | None = None, tail: collections.deque | None = None) -> dict:
        """The process's next reply; every line before it is DVC's or a stage's (streamed, kept in `tail`)."""
        assert self.proc is not None and self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                if line.startswith(REPLY):
                    return json.loads(line[len(REPLY):])
                if not line.strip() or line.lstrip().startswith(NOISE):
                    continue
                sys.stderr.write(line)
                if tail is not None:
                    tail.append(line.rstrip())
                if on_line is not None:
                    on_line(line.rstrip())
        except BaseException:
            self.close()  # a timeout or an interrupt: stop DVC and the stage it started
            raise
        code = self.proc.wait()
        self.close()
        return {"error": f"the DVC process ended without an answer (exit code {code})"}

    def plan(self) -> StalePlan:
        """The stale plan the process was started with; where it fails, asked here (DVC raises its own error)."""
        reply = self._reply()
        if "plan" in reply:
            found = reply["plan"]
            return StalePlan(found["stale"], {k: set(v) for k, v in found["upstream"].items()})
        log.debug("dvc status in its own process failed (%s); asking again here", reply.get("error"))
        return stale_plan(self.root)

    def repro(self, stage: str, env: dict[str, str] | None = None, on_line: Callable[[str], None] | None = None,
              force: bool = False) -> StageResult:
        """`dvc repro --single-item stage` (`force`: --force); raise StageFailed with the stage's message.

        `on_line` also gets every line the stage prints (the flow forwards them,
        training progress included, to the Prefect run log)."""
        from transferline.dvcexp import skipped_in_experiment

        t0 = time.perf_counter()
        if self.proc is None or self.proc.poll() is not None:
            self._start(plan=False)
        assert self.proc is not None and self.proc.stdin is not None
        # force: the registry lost this version (re-register it); an applied DVC experiment left
        # "skipped" in this stage's report with a matching dvc.lock, so nothing was registered or gated
        request = {"stage": stage, "env": env or {}, "force": force or skipped_in_experiment(stage)}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        tail: collections.deque[str] = collections.deque(maxlen=40)
        reply = self._reply(on_line, tail)
        work, restored = None, False
        for line in tail:
            if (done := WORK_DONE.match(line)) and done[1] == stage:
                work = float(done[2])
            restored = restored or line.startswith(FROM_RUN_CACHE.format(stage))
        if "error" in reply:
            tail.append(f"ERROR: {reply['error']}")
            errors = [line for line in tail if "error:" in line.lower() or line.startswith(("  -", "("))] or list(tail)[-10:]
            refused = any(line.startswith(f"[{stage}] error:") for line in tail)
            raise (StageRefused if refused else StageFailed)(f"stage '{stage}' failed:\n" + "\n".join(errors))
        return StageResult(stage, reply["ran"], round(time.perf_counter() - t0, 2), work, restored and reply["ran"])

    def close(self) -> None:
        """End the process and whatever stage it runs. Between stages it holds no lock and has
        no child: ended at once, with nothing to wait for (a no-op run's last step)."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        _kill_group(proc)
        for stream in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()  # type: ignore[union-attr]

    def __enter__(self) -> DvcProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def warm_modality(params: Params) -> str | None:
    """The modality whose libraries a run's DVC process imports ahead (transferline.warmstart);
    None with `orchestrate.warm_stages: false`."""
    return params.modality if params.orchestrate.warm_stages else None


def start_run(warm: str | None) -> tuple[DvcProcess, list[str]]:
    """A run's DVC process (its stale plan, then the warm-up of `warm`), started once the project
    is prepared (a project made by `transferline init`: the installed code's hashes, its data);
    the paths preparing it changed."""
    from transferline.project import prepare

    changed = prepare()
    return DvcProcess(plan=True, warm=warm), changed


_prestarted: list[tuple[DvcProcess, list[str]]] = []  # what `prestart` began, until the flow takes it


@contextlib.contextmanager
def prestart(warm: str | None) -> Iterator[None]:
    """`transferline run`: `start_run` before this process loads Prefect and MLflow: 2.5-3 s in
    which the other core sat idle. The flow takes it (`take_prestarted`); the process is ended
    here whether it did or not (ending it twice is harmless)."""
    process, changed = start_run(warm)
    _prestarted.append((process, changed))
    try:
        yield
    finally:
        _prestarted.clear()
        process.close()


def take_prestarted() -> tuple[DvcProcess, list[str]] | None:
    """The DVC process `prestart` began in this process and the paths its `prepare` changed, once;
    None where nothing was prestarted (a worker's run, `python flows/pipeline.py`)."""
    return _prestarted.pop() if _prestarted else None


def repro_stage(stage: str, env: dict[str, str] | None = None,
                on_line: Callable[[str], None] | None = None, force: bool = False) -> StageResult:
    """One stage in a DVC process of its own (`transferline promote --from-experiment`)."""
    with DvcProcess() as dvc:
        return dvc.repro(stage, env, on_line, force)


def _error_text(err: BaseException) -> str:
    """An exception and its causes on one line, as DVC's CLI prints them."""
    parts = []
    while err is not None and str(err) not in parts:
        parts.append(str(err) or type(err).__name__)
        err = err.__cause__ or err.__context__
    return ": ".join(parts)


def _serve(root: str, plan: bool, warm: str | None) -> None:
    """The DVC process: the plan first (`plan`), then one `Repo.reproduce` per request line on stdin.

    Every reply is one line (REPLY + JSON) on stdout; DVC's messages and the stage's output
    (its process inherits both streams: DvcProcess joins them) come before it, in order.
    `warm` (a modality): its slow libraries imported once and the stages forked from here
    (transferline.warmstart), unless the plan found nothing stale."""
    from transferline.dvcyaml import locks_rewritten_from_safe_parse, parse_once, plain_dumps_in_c
    from transferline.env import imports_without_gc

    with imports_without_gc():  # DVC's modules, and the plan's: 0.2-0.4 s less on two cores
        parse_once()  # params.yaml: 8 parses of the same text a stage
        locks_rewritten_from_safe_parse()  # dvc.lock after each stage: 0.2 s less
        plain_dumps_in_c()  # and written (libyaml), then read back unparsed: 0.1-0.15 s less
        if plan:
            try:
                found = stale_plan(root)
                reply: dict = {"plan": {"stale": found.stale,
                                        "upstream": {k: sorted(v) for k, v in found.upstream.items()}}}
            except Exception as err:  # the flow asks again in its process, where DVC raises its own error
                print(REPLY + json.dumps({"error": _error_text(err)}), flush=True)
                return
            print(REPLY + json.dumps(reply, default=str), flush=True)
            warm = warm if found.stale else None
        from dvc.repo import Repo

    if warm:
        from transferline.warmstart import warm_up

        warm_up(warm)

    base = dict(os.environ)
    for line in sys.stdin:
        request = json.loads(line)
        os.environ.clear()
        os.environ.update({**base, **request["env"]})  # the stage's own (its MLflow run), never the last one's
        try:
            with Repo(root) as repo:
                ran = bool(repo.reproduce(request["stage"], single_item=True, force=request["force"]))
            reply = {"ran": ran}
        except Exception as err:
            reply = {"error": _error_text(err)}
        print(REPLY + json.dumps(reply), flush=True)


if __name__ == "__main__":  # DvcProcess
    options = sys.argv[2:]
    _serve(sys.argv[1], "--plan" in options, options[options.index("--warm") + 1] if "--warm" in options else None)
