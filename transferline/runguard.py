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
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

MARK = "TRANSFERLINE_RUN_PID"
POLL_S = 0.5
GRACE_S = 5.0


def start() -> subprocess.Popen | None:
    """Mark this process's descendants and watch it; None where /proc is missing."""
    if not Path("/proc/self/environ").exists():
        return None
    os.environ[MARK] = str(os.getpid())
    return subprocess.Popen([sys.executable, "-m", "transferline.runguard", str(os.getpid())],
                            start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, MARK: ""})


def marked(run_pid: int) -> list[int]:
    """Ids of the live processes that carry `run_pid`'s mark (the run itself excluded)."""
    needle = f"{MARK}={run_pid}".encode() + b"\0"
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in (run_pid, os.getpid()):
            continue
        try:
            if needle in (proc / "environ").read_bytes() + b"\0":
                found.append(int(proc.name))
        except OSError:  # gone, or another user's
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return not Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[-1].startswith("Z")  # a zombie is gone
    except (ProcessLookupError, FileNotFoundError):
        return False
    except PermissionError:
        return True


def watch(run_pid: int) -> None:
    """Wait for `run_pid` to end, then end what it left behind."""
    import signal
    import time

    while _alive(run_pid):
        time.sleep(POLL_S)
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
