"""A long-lived local Prefect server that the CLI starts once and reuses.

Without PREFECT_API_URL, every `transferline run` or `check` would start
Prefect's ephemeral API (a uvicorn process, 7-25 s on a 2-core machine) and
stop it again. The first run or check (`orchestrate.local_server: true`, the
default) or `transferline server start` starts the same server once, on
127.0.0.1, with its database in PREFECT_HOME (the project's
.transferline/prefect, the database the ephemeral API uses too, so the flow
run history stays one); while it is up, run and check point PREFECT_API_URL
at it (`transferline.cli.common.use_local_server`). Its UI shows every flow
run; `transferline server stop` stops it. Stdlib only: importing
this costs nothing, and the CLI checks for the server before Prefect loads.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_NAME = "transferline-server.json"  # in PREFECT_HOME: pid, port, api url of the running server
LOG_NAME = "transferline-server.log"
LOCK_NAME = "transferline-server.lock"


@dataclass(frozen=True)
class Server:
    pid: int
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"


def _state(home: Path) -> Path:
    return Path(home) / STATE_NAME


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process took the pid
        return False
    return True


def _listening(port: int, timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=timeout):
        return True
    return False


def running(home: Path) -> Server | None:
    """The server started from this PREFECT_HOME, if its process is alive and its port answers."""
    try:
        server = Server(**json.loads(_state(home).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return server if _alive(server.pid) and _listening(server.port) else None


def _healthy(server: Server) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{server.api_url}/health", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(home: Path, port: int | None = None, timeout: float = 180.0) -> Server:
    """Start the server in the background (or return the one already up); wait until it answers.

    Two commands starting it at once (a run and a check) get one server: the
    second waits on the lock, then finds the first one's server up."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    with open(home / LOCK_NAME, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        return running(home) or _spawn(home, port, timeout)


def _spawn(home: Path, port: int | None, timeout: float) -> Server:
    port = port or _free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(home.resolve()), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    with open(home / LOG_NAME, "ab") as log:
        # its own session: a Ctrl-C in the terminal that started it does not stop it
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                 "--port", str(port)], stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                cwd=home, start_new_session=True)
    server = Server(proc.pid, port)
    deadline = time.monotonic() + timeout
    while not _healthy(server):
        if proc.poll() is not None or time.monotonic() > deadline:
            _kill(proc.pid)
            tail = (home / LOG_NAME).read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the Prefect server on 127.0.0.1:{port} did not start "
                               f"(log {home / LOG_NAME}):\n{tail}")
        time.sleep(0.25)
    _state(home).write_text(json.dumps(asdict(server)) + "\n")
    return server


def _kill(pid: int) -> None:
    """SIGTERM the server's process group, SIGKILL after 10 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
        for _ in range(100):
            if not _alive(pid):
                return
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it when this process started it
            time.sleep(0.1)
        os.killpg(pid, signal.SIGKILL)


def stop(home: Path) -> Server | None:
    """Stop the server started from this PREFECT_HOME; None if none was running."""
    server = running(home)
    if server is not None:
        _kill(server.pid)
    _state(home).unlink(missing_ok=True)
    return server
