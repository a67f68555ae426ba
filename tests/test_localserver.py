"""`transferline server start|status|stop`: a real Prefect server on 127.0.0.1
that run and check reuse, and that a flow run on it is recorded there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from conftest import MLFLOW_ENV, ROOT


def cli(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV and not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(project / ".transferline/prefect"), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "transferline.cli", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)


def test_server_start_status_stop_and_the_cli_uses_it(tmp_path, monkeypatch):
    from transferline.cli.common import use_local_server

    home = tmp_path / ".transferline/prefect"
    assert json.loads(cli(tmp_path, "server", "status", "--json").stdout) == {"running": False}
    started = cli(tmp_path, "server", "start")
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        info = json.loads(cli(tmp_path, "server", "status", "--json").stdout)
        assert info["running"] and info["api_url"].startswith("http://127.0.0.1:")
        assert httpx.get(f"{info['api_url']}/health", timeout=10).json() is True
        again = cli(tmp_path, "server", "start")  # a second start reuses the running one
        assert again.returncode == 0 and f"pid {info['pid']}" in again.stderr

        # run and check point Prefect at it (a user's own PREFECT_API_URL would win)
        monkeypatch.delenv("PREFECT_API_URL", raising=False)
        monkeypatch.setenv("PREFECT_HOME", str(home))
        assert use_local_server(start=False) == info["api_url"] == os.environ["PREFECT_API_URL"]

        # a flow run made through it is recorded in the server's database
        flow = "from prefect import flow\n@flow(name='tl-server-test')\ndef f():\n    return 1\nprint(f())\n"
        env = {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV}
        done = subprocess.run([sys.executable, "-c", flow], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        runs = httpx.post(f"{info['api_url']}/flow_runs/filter", json={}, timeout=10).json()
        assert [r["state"]["type"] for r in runs] == ["COMPLETED"]
    finally:
        stopped = cli(tmp_path, "server", "stop")
    assert "stopped the Prefect server" in stopped.stderr
    assert json.loads(cli(tmp_path, "server", "status", "--json").stdout) == {"running": False}
    assert not (home / "transferline-server.json").exists()


def test_run_and_check_start_one_server_and_reuse_it(tmp_path, monkeypatch):
    """`orchestrate.local_server: true`: the first command starts the server, two at once start one."""
    from concurrent.futures import ThreadPoolExecutor

    from transferline import localserver
    from transferline.cli.common import use_local_server

    home = tmp_path / ".transferline/prefect"
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(home))
    assert use_local_server(start=False) is None and localserver.running(home) is None
    try:
        with ThreadPoolExecutor(2) as pool:
            urls = list(pool.map(lambda _: localserver.start(home, timeout=120).api_url, range(2)))
        assert urls[0] == urls[1]
        server = localserver.running(home)
        assert server is not None and use_local_server(start=True) == server.api_url == urls[0]
        monkeypatch.delenv("PREFECT_API_URL")
        assert use_local_server(start=True) == server.api_url and localserver.running(home) == server
    finally:
        localserver.stop(home)
    assert localserver.running(home) is None


# a flow run as `transferline run` and `check` start theirs (transferline.cli.common.no_flow_heartbeats)
HEARTBEAT_FLOW = """
from prefect import flow
from prefect.context import get_run_context
from transferline.cli.common import no_flow_heartbeats

@flow
def f():
    print(get_run_context().flow_run.id)

with no_flow_heartbeats():
    f()
"""


def test_cli_flows_send_no_heartbeat_unless_a_prefect_setting_asks(prefect_api):
    """Prefect's heartbeat thread cost a no-op run 0.7 s (it sleeps in 1 s steps and is joined at the
    flow's end); the runguard marks a killed CLI run Crashed instead. A user's setting still wins."""
    def flow_run(**env: str) -> str:
        env = {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV and not k.startswith("PREFECT_")} | env
        done = subprocess.run([sys.executable, "-c", HEARTBEAT_FLOW], cwd=ROOT, capture_output=True, text=True,
                              env={**env, "PREFECT_API_URL": prefect_api}, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.split()[-1]

    def heartbeats(flow_run_id: str) -> int:
        body = {"filter": {"event": {"name": ["prefect.flow-run.heartbeat"]},
                           "resource": {"id": [f"prefect.flow-run.{flow_run_id}"]}}, "limit": 10}
        return len(httpx.post(f"{prefect_api}/events/filter", json=body, timeout=10).json()["events"])

    quiet = flow_run()
    asked = flow_run(PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30")
    t0 = time.perf_counter()
    while not heartbeats(asked) and time.perf_counter() - t0 < 60:  # the server stores events in batches
        time.sleep(0.5)
    assert heartbeats(asked) == 1  # the first beat goes as the flow starts
    assert heartbeats(quiet) == 0  # sent before the one above, had there been one
