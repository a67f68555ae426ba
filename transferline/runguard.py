"""No orphans: when a run dies, even by SIGKILL, every process it started dies too.

`dvc repro` and its stage run in their own session (so a timeout can stop
the pair), and the local Prefect API is a subprocess Prefect starts: none
of them notices when `transferline run` is SIGKILLed, so they kept
training, held DVC's lock and served for minutes. `start()` marks this
process's environment (every descendant inherits the mark, whatever its
session) and starts a small watcher in a session of its own, so a kill of
the run's process group does not take it along. When the run is gone, the
watcher ends every process that carries the mark: SIGTERM, then SIGKILL.
Linux only (/proc); elsewhere it does nothing.

A killed run reports no state either: its Prefect flow run and its MLflow
runs stayed "Running" for good (Prefect's own remedy, heartbeats read by an
automation on the server, is not set up on a local server). So the flows a
guarded run starts name their runs (`note_flow_run`, `note_mlflow_run`), a
normal exit forgets them, and after a kill the watcher marks those still
running through each one's client: the flow runs and their task runs
Crashed, the MLflow runs KILLED. Where the watcher died with its run (a
reboot, the OOM killer taking both), the next guarded run does its work: it
ends what still carries a dead run's mark before it starts (`end_orphans`),
and its watcher marks the runs that dead runs' notes name (`sweep`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import sys
from pathlib import Path

MARK = "TRANSFERLINE_RUN_PID"
POLL_S = 0.5
GRACE_S = 5.0
NOTED = Path(".transferline/runguard")  # <run pid>: "<prefect|mlflow> <run id> <API or tracking URI>" per run


def start() -> subprocess.Popen | None:
    """Mark this process's descendants and watch it; None where /proc is missing."""
    if not Path("/proc/self/environ").exists():
        return None
    end_orphans(os.getpid())  # before this run's DVC could meet theirs at DVC's lock
    os.environ[MARK] = str(os.getpid())
    atexit.register(_forget)  # a run that exits (even with an error) has ended its runs itself
    return subprocess.Popen([sys.executable, "-m", "transferline.runguard", str(os.getpid())],
                            start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, MARK: ""})


def note_flow_run() -> None:
    """Called by a flow as it starts: if a guard watches this process, it marks the flow run
    Crashed should the process be killed. Nothing to do in a process no guard watches (a
    worker's run: the worker reports it) or on Prefect's ephemeral API (gone with the run)."""
    from prefect.context import get_run_context
    from prefect.settings import PREFECT_API_URL

    if api_url := PREFECT_API_URL.value():
        _note("prefect", str(get_run_context().flow_run.id), api_url)


def note_mlflow_run(run_id: str, tracking_uri: str) -> None:
    """The same for the run's MLflow run: ended KILLED, with its nested runs still running."""
    _note("mlflow", run_id, tracking_uri)


def _note(kind: str, run_id: str, where: str) -> None:
    if os.environ.get(MARK) != str(os.getpid()):
        return
    NOTED.mkdir(parents=True, exist_ok=True)
    # 0600: a tracking URI may carry a password
    with os.fdopen(os.open(NOTED / str(os.getpid()), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "a") as f:
        f.write(f"{kind} {run_id} {where}\n")


def _forget() -> None:
    with contextlib.suppress(OSError):
        (NOTED / str(os.getpid())).unlink(missing_ok=True)


def mark_killed(run_pid: int, why: str = "") -> list[str]:
    """Mark what the killed run `run_pid` noted and left unfinished: its Prefect flow runs (a
    subflow first) and their task runs Crashed, its MLflow run and nested runs KILLED; the ids."""
    path = NOTED / str(run_pid)
    try:
        rows = [line.split(" ", 2) for line in path.read_text().splitlines() if line]
    except FileNotFoundError:
        return []  # the run exited by itself, or started no flow
    why = why or f"transferline run (pid {run_pid}) was killed; transferline.runguard ended the processes it started"
    done = []
    for kind, run_id, where in reversed(rows):
        with contextlib.suppress(Exception):  # a server gone too: nothing left to tell (no console here)
            done += _crash_flow_run(run_id, where, why) if kind == "prefect" else _kill_mlflow_run(run_id, where)
    path.unlink(missing_ok=True)
    return done


def sweep(own_pid: int) -> list[str]:
    """Mark the runs noted by guarded runs that are gone along with their watchers (a run whose
    watcher lives is that watcher's to mark); the ids. A pid in use again is left for later."""
    try:
        stale = [int(p.name) for p in NOTED.iterdir() if p.name.isdigit() and int(p.name) != own_pid]
    except FileNotFoundError:
        return []
    done = []
    for pid in stale:
        if not _alive(pid):
            done += mark_killed(pid, f"transferline run (pid {pid}) ended without reporting (its guard too: a "
                                     "restart, or both killed); found when the next run started")
    return done


def _crash_flow_run(flow_run_id: str, noted_api: str, why: str) -> list[str]:
    # The noted server, then this process's: a local server started again after a restart
    # listens on another port, with the same database.
    for api_url in dict.fromkeys(filter(None, [noted_api, os.environ.get("PREFECT_API_URL")])):
        with contextlib.suppress(Exception):
            return _crash_flow_run_on(flow_run_id, api_url, why)
    return []


def _crash_flow_run_on(flow_run_id: str, api_url: str, why: str) -> list[str]:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY
    from prefect.states import Crashed

    with SyncPrefectClient(api_url, auth_string=PREFECT_API_AUTH_STRING.value(),
                           api_key=PREFECT_API_KEY.value()) as client:
        if client.read_flow_run(flow_run_id).state.is_final():
            return []
        for task_run in client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))):
            if task_run.state is not None and not task_run.state.is_final():
                client.set_task_run_state(task_run.id, Crashed(message=why), force=True)
        client.set_flow_run_state(flow_run_id, Crashed(message=why), force=True)
    return [flow_run_id]


def _kill_mlflow_run(run_id: str, tracking_uri: str) -> list[str]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    nested = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}' "
                                "and attributes.status = 'RUNNING'")
    ended = [r.info.run_id for r in [*nested, run] if r.info.status == "RUNNING"]
    for r in ended:
        client.set_terminated(r, "KILLED")
    return ended


def marked(run_pid: int) -> list[int]:
    """Ids of the live processes that carry `run_pid`'s mark (the run itself excluded)."""
    return [pid for pid in _marks().get(run_pid, []) if pid != run_pid]


def _marks() -> dict[int, list[int]]:
    """{run pid: the live processes that carry its mark}, this process excluded."""
    prefix = f"{MARK}=".encode()
    found: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:  # gone, or another user's
            continue
        for entry in environ:
            if entry.startswith(prefix) and entry[len(prefix):].isdigit():
                found.setdefault(int(entry[len(prefix):]), []).append(int(proc.name))
    return found


def end_orphans(own_pid: int) -> list[int]:
    """End what runs gone along with their guards left running (their DVC processes and stages:
    a guard killed too cannot end them); the runs' pids. Milliseconds when there are none."""
    gone = [run_pid for run_pid in _marks() if run_pid != own_pid and not _alive(run_pid)]
    for run_pid in gone:
        _end_marked(run_pid)
    return gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return not Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[-1].startswith("Z")  # a zombie is gone
    except (ProcessLookupError, FileNotFoundError):
        return False
    except PermissionError:
        return True


def watch(run_pid: int) -> None:
    """Wait for `run_pid` to end, then end what it left behind and mark its runs killed;
    meanwhile mark what earlier runs left unmarked."""
    import time

    sweep(run_pid)
    while _alive(run_pid):
        time.sleep(POLL_S)
    _end_marked(run_pid)
    mark_killed(run_pid)


def _end_marked(run_pid: int) -> None:
    import signal
    import time

    for sig, wait in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, 0.0)):
        left = marked(run_pid)
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = [p for p in left if _alive(p)]
        if not left:
            return


if __name__ == "__main__":
    watch(int(sys.argv[1]))
