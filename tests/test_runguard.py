"""A SIGKILLed run leaves nothing behind: not the DVC process in its own session,
not the stage under it, not the local Prefect API (transferline/runguard.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from conftest import ROOT

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
