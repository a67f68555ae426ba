"""A real `prefect server` and process worker on loopback, for tests and benchmarks.

Starts `prefect server start --host 127.0.0.1` on a free port with its own
PREFECT_HOME (SQLite), waits for /api/health, and stops the whole process
group on exit. Talks to the REST API with httpx, like any client would.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

PREFECT = [sys.executable, "-m", "prefect"]
ISOLATED = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "TRANSFERLINE_MLFLOW_RUN_ID")
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(home: Path, api_url: str | None = None) -> dict[str, str]:
    # Nothing of the caller's Prefect profile or MLflow run may leak into the server or its runs.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PREFECT_") and k not in ISOLATED}
    env.update({
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",  # a worker polls for runs this often
    })
    if api_url:  # a client or worker: its flow runs send INFO logs (stage output) to the server
        env.update({"PREFECT_API_URL": api_url, "PREFECT_LOGGING_LEVEL": "INFO"})
    else:
        env["PREFECT_LOGGING_LEVEL"] = "WARNING"
    return env


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM a server started in a session of its own (its whole group); SIGKILL after 20 s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


@contextmanager
def prefect_server(home: Path, startup_timeout: float = 180) -> Iterator[str]:
    """Yield the API URL of a fresh server; its log goes to home/server.log."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
                            env=server_env(home), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited {proc.returncode}: {(home / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"prefect server not healthy after {startup_timeout} s")
            time.sleep(0.5)
        yield api
    finally:
        stop_group(proc)
        log.close()


@contextmanager
def process_worker(home: Path, api: str, pool: str, cwd: Path | None = None,
                   env: dict | None = None) -> Iterator[subprocess.Popen]:
    """`prefect worker start --pool POOL` for the duration (in cwd, with env added); log in home/worker.log."""
    log = open(home / "worker.log", "w")
    proc = subprocess.Popen([*PREFECT, "worker", "start", "--pool", pool, "--type", "process"], cwd=cwd,
                            env={**server_env(home, api), **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        yield proc
    finally:
        stop_group(proc)
        log.close()


def prefect_cli(home: Path, api: str, *args: str, cwd: Path | None = None, env: dict | None = None) -> str:
    """Run `prefect ARGS` against the server; return stdout, raise with the output on failure."""
    done = subprocess.run([*PREFECT, *args], env={**server_env(home, api), **(env or {})}, cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(args)} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout


def trigger(home: Path, api: str, deployment: str) -> str:
    """`prefect deployment run FLOW/DEPLOYMENT`; return the new flow run's id."""
    out = prefect_cli(home, api, "deployment", "run", deployment)
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", out) or re.search(r"([0-9a-f]{8}-[0-9a-f-]{27})", out)
    if not match:
        raise RuntimeError(f"no flow run id in: {out}")
    return match.group(1)


def wait_for_run(api: str, flow_run_id: str, timeout: float = 900) -> dict:
    """Poll the flow run until it reaches a final state; return it."""
    deadline = time.monotonic() + timeout
    while True:
        run = httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=10).json()
        if (run.get("state") or {}).get("type") in FINAL:
            return run
        if time.monotonic() > deadline:
            raise TimeoutError(f"flow run {flow_run_id} still {run.get('state', {}).get('type')} after {timeout} s")
        time.sleep(1)


def artifacts(api: str, flow_run_id: str) -> list[dict]:
    body = {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}
    return httpx.post(f"{api}/artifacts/filter", json=body, timeout=10).json()


def logs(api: str, flow_run_id: str) -> str:
    """The flow run's log messages (its tasks' included), oldest first."""
    body = {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "sort": "TIMESTAMP_ASC", "limit": 200}
    return "\n".join(entry["message"] for entry in httpx.post(f"{api}/logs/filter", json=body, timeout=10).json())


def deployment(api: str, name: str) -> dict:
    flow, dep = name.split("/")
    return httpx.get(f"{api}/deployments/name/{flow}/{dep}", timeout=10).json()
