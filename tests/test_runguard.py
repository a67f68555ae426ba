"""A SIGKILLed run leaves nothing behind: not the DVC process in its own session,
not the stage under it, not the local Prefect API (transferline/runguard.py)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from conftest import MLFLOW_ENV, PREFECT_ENV, ROOT
from transferline import runguard

# stands for `transferline run`: starts the guard, then a child in a session of its own (like `dvc repro`)
# which starts a grandchild (like the stage)
RUN = """
import subprocess, sys, time
from transferline import runguard
runguard.start()
child = subprocess.Popen(["sh", "-c", "sleep 300 & echo $!; wait"], start_new_session=True, stdout=subprocess.PIPE, text=True)
print(child.pid, child.stdout.readline().strip(), flush=True)
time.sleep(300)
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return not f.read().rsplit(") ", 1)[-1].startswith("Z")
    except FileNotFoundError:
        return False


def guard_of(run_pid: int) -> int:
    """The pid of the watcher that runguard.start() started for `run_pid`."""
    needle = f"transferline.runguard\0{run_pid}\0".encode()
    for proc in os.listdir("/proc"):
        try:
            with open(f"/proc/{proc}/cmdline", "rb") as f:
                if proc.isdigit() and needle in f.read():
                    return int(proc)
        except OSError:
            continue
    raise AssertionError(f"no runguard watcher for pid {run_pid}")


def test_sigkill_of_the_run_ends_every_process_it_started():
    run = subprocess.Popen([sys.executable, "-c", RUN], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    child, grandchild = map(int, run.stdout.readline().split())
    assert alive(child) and alive(grandchild)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    t0 = time.perf_counter()
    while (alive(child) or alive(grandchild)) and time.perf_counter() - t0 < 15:
        time.sleep(0.1)
    assert not alive(child) and not alive(grandchild), "orphans left running"
    assert time.perf_counter() - t0 < 10  # the guard polls every 0.5 s, then SIGTERM


def test_what_a_run_killed_with_its_guard_left_running_is_ended_by_the_next_run():
    run = subprocess.Popen([sys.executable, "-c", RUN], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    child, grandchild = map(int, run.stdout.readline().split())
    os.kill(guard_of(run.pid), signal.SIGKILL)  # as a restart's shutdown, or the OOM killer taking both, would
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    time.sleep(2 * runguard.POLL_S)
    assert alive(child) and alive(grandchild)  # nothing is left to end them
    later = subprocess.Popen([sys.executable, "-c", RUN], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        later_child, _ = map(int, later.stdout.readline().split())  # its runguard.start() has returned
        assert not alive(child) and not alive(grandchild), "the next run started beside the orphans"
        assert alive(later_child)
    finally:
        later.kill()
        later.wait()


# stands for a guarded run's flow: notes its Prefect flow run and its MLflow run (as flows/pipeline.py
# does), prints their ids, then works in a task for argv[2] seconds
FLOW = """
import sys, time
import mlflow
from prefect import flow, task
from prefect.context import get_run_context
from transferline import runguard

runguard.start()

@task
def work(seconds: float) -> None:
    time.sleep(seconds)

@flow
def guarded(seconds: float) -> None:
    runguard.note_flow_run()
    mlflow.set_tracking_uri(sys.argv[1])
    with mlflow.start_run(run_name="pipeline") as run:
        runguard.note_mlflow_run(run.info.run_id, mlflow.get_tracking_uri())
        with mlflow.start_run(run_name="stage", nested=True):
            print(get_run_context().flow_run.id, run.info.run_id, flush=True)
            work(seconds)

guarded(float(sys.argv[2]))
"""


def start_flow(tmp_path, api: str, seconds: float) -> tuple[subprocess.Popen, str, str]:
    env = {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV and k not in PREFECT_ENV}
    env.update(PREFECT_API_URL=api, PREFECT_HOME=str(tmp_path / "prefect"), PYTHONPATH=str(ROOT))
    run = subprocess.Popen([sys.executable, "-c", FLOW, f"sqlite:///{tmp_path}/mlflow.db", str(seconds)],
                           cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = run.stdout.readline().split()
    assert len(line) == 2, run.stderr.read()[-3000:]
    return run, *line


def states(tmp_path, api: str, flow_run_id: str) -> tuple[str, list[str], list[tuple[str, str]]]:
    """(the flow run's state, its task runs' states, (name, status) of every MLflow run)."""
    import httpx

    flow_run = httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=10).json()
    tasks = httpx.post(f"{api}/task_runs/filter", json={"flow_runs": {"id": {"any_": [flow_run_id]}}},
                       timeout=10).json()
    with sqlite3.connect(f"file:{tmp_path}/mlflow.db?mode=ro", uri=True) as con:
        runs = sorted(con.execute("select name, status from runs").fetchall())
    return flow_run["state"]["type"], [t["state"]["type"] for t in tasks], runs


@pytest.mark.slow
def test_a_killed_runs_flow_run_is_crashed_and_its_mlflow_runs_killed(tmp_path, prefect_api):
    run, flow_run_id, _ = start_flow(tmp_path, prefect_api, seconds=300)
    noted = tmp_path / runguard.NOTED / str(run.pid)
    assert noted.is_file() and oct(noted.stat().st_mode & 0o777) == "0o600"
    assert states(tmp_path, prefect_api, flow_run_id) == ("RUNNING", ["RUNNING"],
                                                          [("pipeline", "RUNNING"), ("stage", "RUNNING")])
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    t0 = time.perf_counter()
    while noted.exists() and time.perf_counter() - t0 < 60:  # the guard removes it once it has told both
        time.sleep(0.2)
    assert states(tmp_path, prefect_api, flow_run_id) == ("CRASHED", ["CRASHED"],
                                                          [("pipeline", "KILLED"), ("stage", "KILLED")])
    import httpx

    message = httpx.get(f"{prefect_api}/flow_runs/{flow_run_id}", timeout=10).json()["state"]["message"]
    assert f"transferline run (pid {run.pid}) was killed" in message, message


@pytest.mark.slow
def test_a_run_that_ends_by_itself_keeps_its_states_and_leaves_no_note(tmp_path, prefect_api):
    run, flow_run_id, _ = start_flow(tmp_path, prefect_api, seconds=0)
    assert run.wait(timeout=120) == 0, run.stderr.read()[-3000:]
    assert not (tmp_path / runguard.NOTED / str(run.pid)).exists()
    time.sleep(2 * runguard.POLL_S + 1)  # the guard has seen the run end, and has nothing to mark
    assert states(tmp_path, prefect_api, flow_run_id) == ("COMPLETED", ["COMPLETED"],
                                                          [("pipeline", "FINISHED"), ("stage", "FINISHED")])


@pytest.mark.slow
def test_runs_left_running_by_a_run_killed_with_its_guard_are_marked_by_the_next_run(tmp_path, prefect_api):
    run, flow_run_id, _ = start_flow(tmp_path, prefect_api, seconds=300)
    t0 = time.perf_counter()
    while states(tmp_path, prefect_api, flow_run_id)[1] != ["RUNNING"] and time.perf_counter() - t0 < 30:
        time.sleep(0.2)  # the task run reaches the server a moment after it starts
    os.kill(guard_of(run.pid), signal.SIGKILL)  # as a restart, or the OOM killer taking both, would
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    noted = tmp_path / runguard.NOTED / str(run.pid)
    # after a restart the project's server listens on another port: the noted URL answers no more
    noted.write_text(noted.read_text().replace(prefect_api, "http://127.0.0.1:9/api"))
    time.sleep(1)
    assert states(tmp_path, prefect_api, flow_run_id)[:2] == ("RUNNING", ["RUNNING"])  # nobody marked them

    later, later_flow_run_id, _ = start_flow(tmp_path, prefect_api, seconds=300)  # the next guarded run
    try:
        t0 = time.perf_counter()
        while noted.exists() and time.perf_counter() - t0 < 60:
            time.sleep(0.2)
        assert states(tmp_path, prefect_api, flow_run_id) == (
            "CRASHED", ["CRASHED"],
            [("pipeline", "KILLED"), ("pipeline", "RUNNING"), ("stage", "KILLED"), ("stage", "RUNNING")])
        import httpx

        message = httpx.get(f"{prefect_api}/flow_runs/{flow_run_id}", timeout=10).json()["state"]["message"]
        assert f"transferline run (pid {run.pid}) ended without reporting" in message, message
        assert states(tmp_path, prefect_api, later_flow_run_id)[0] == "RUNNING"  # its own run is not touched
    finally:
        later.kill()
        later.wait()
