"""One pipeline run at a time per repository.

DVC takes its own lock only while it reproduces one stage
(transferline.dvcrun), so two pipeline runs could interleave stages. The run takes an
exclusive `flock` on .transferline/run.lock for its whole length (the kernel
drops it when the process dies, so a killed run never leaves it stuck); the
file names the holder's pid for the message a second run prints.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = Path(".transferline/run.lock")

_held: dict[str, tuple[int, int]] = {}  # resolved path -> (fd, depth); re-entrant within a process


class RunLockBusy(RuntimeError):
    """Another process holds the repository's run lock."""


def holder(path: Path = LOCK_FILE) -> str:
    try:
        return path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


@contextmanager
def run_lock(wait_seconds: float = 0, path: Path = LOCK_FILE, poll: float = 0.5) -> Iterator[None]:
    """Hold the run lock; wait up to `wait_seconds` for it, then raise RunLockBusy."""
    key = str(path.resolve())
    if key in _held:  # the CLI took it; the flow it starts takes it again
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
        try:
            yield
        finally:
            _held[key] = (fd, _held[key][1] - 1)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                waited = f" after waiting {wait_seconds:g} s" if wait_seconds else ""
                raise RunLockBusy(
                    f"another transferline run holds the lock ({holder(path)}){waited}; wait for it to finish "
                    f"or raise orchestrate.lock_wait_seconds in params.yaml"
                ) from None
            time.sleep(poll)
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()}".encode())
    _held[key] = (fd, 1)
    try:
        yield
    finally:
        del _held[key]
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
